//! Storage: the SQLite index (the truth) and the spool of encrypted chunks.

mod active;
pub mod files;
pub mod index;
pub mod spool;

pub use files::{FileMeta, NewFile, Removed, ThumbRow};
pub use index::{ChunkRow, Commit, FileRow, Index, UploadRow};
pub use spool::{Region, Spool, Unowned, release_region};
