module sluice.local/forward

go 1.22
