// Command sluice-forward relays TCP connections from one local address to another.
//
// The local cluster's API server listens on the bridge address 10.244.0.1:6443 (so pods can
// reach it) and this relay makes it reachable on 127.0.0.1:6443 as well. TLS passes through
// untouched: the serving certificate names both addresses.
package main

import (
	"flag"
	"io"
	"log"
	"net"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:6443", "address to listen on")
	target := flag.String("target", "10.244.0.1:6443", "address to relay to")
	flag.Parse()

	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("failed to listen on %s: %v", *listen, err)
	}
	log.Printf("relaying %s -> %s", *listen, *target)
	for {
		client, err := listener.Accept()
		if err != nil {
			log.Printf("accept failed: %v", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		go relay(client, *target)
	}
}

func relay(client net.Conn, target string) {
	defer client.Close()
	upstream, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		log.Printf("failed to dial %s: %v", target, err)
		return
	}
	defer upstream.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tcp, ok := dst.(*net.TCPConn); ok {
			_ = tcp.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(upstream, client)
	go pipe(client, upstream)
	<-done
	<-done
}
