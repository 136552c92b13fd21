//! Keyed window state: key groups, the byte layout of state and timers, the store
//! interface with its RocksDB and in-memory implementations, and the bounded hot-state
//! cache in front of it.

pub mod format;
pub mod key_group;
pub mod meta;
pub mod rocksdb;
pub mod store;
pub mod windows;

pub use key_group::key_group;
pub use store::{Column, MemoryStore, StateBatch, StateError, StateStore, StoredCheckpoint};
pub use windows::{
    CheckpointTimers, KeyedWindowState, StoredWindow, Timer, TimerKind, WindowState,
};
