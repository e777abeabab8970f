//! The spool: encrypted chunk files on disk, one directory per upload.
//!
//! Chunk `n` of upload `U`, written with nonce `N`, is `spool/U/n.N` (N as 16 hex digits). Every
//! name is made by chunkd (upload ids are UUIDs it generated), never from client strings. A write
//! always goes to a fresh file, so two requests racing on the same chunk never touch each other's
//! bytes; the index row decides which one counts. Files whose row never committed are litter,
//! never data.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::config::Durability;

/// The spool directory and the durability it writes with.
pub struct Spool {
    root: PathBuf,
    durability: Durability,
}

/// Upload ids are chunkd's own UUIDs in simple form; anything else never reaches the disk.
fn checked_id(upload_id: &str) -> io::Result<&str> {
    if upload_id.len() == 32 && upload_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(upload_id)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an upload id",
        ))
    }
}

impl Spool {
    pub fn open(root: PathBuf, durability: Durability) -> io::Result<Self> {
        fs::create_dir_all(&root)?;
        Ok(Spool { root, durability })
    }

    /// The spool directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.durability == Durability::Safe {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The directory holding an upload's chunks.
    pub fn upload_dir(&self, upload_id: &str) -> io::Result<PathBuf> {
        Ok(self.root.join(checked_id(upload_id)?))
    }

    /// The file of one write of one chunk.
    pub fn chunk_path(&self, upload_id: &str, number: u64, nonce: u64) -> io::Result<PathBuf> {
        Ok(self
            .upload_dir(upload_id)?
            .join(format!("{number}.{nonce:016x}")))
    }

    /// Creates a fresh chunk file (and the upload's directory on its first chunk).
    pub fn create_chunk(&self, upload_id: &str, number: u64, nonce: u64) -> io::Result<File> {
        let dir = self.upload_dir(upload_id)?;
        if !dir.exists() {
            match fs::create_dir(&dir) {
                Ok(()) => self.sync_dir(&self.root)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.chunk_path(upload_id, number, nonce)?)
    }

    /// The file of one write of thumbnail `idx` of an upload's content.
    pub fn thumb_path(&self, upload_id: &str, idx: u32, nonce: u64) -> io::Result<PathBuf> {
        Ok(self
            .upload_dir(upload_id)?
            .join(format!("t{idx}.{nonce:016x}")))
    }

    /// Writes a whole sealed blob (a thumbnail) to a fresh file, durably as configured.
    pub fn write_blob(&self, upload_id: &str, path: &Path, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
        f.write_all(bytes)?;
        self.finish_chunk(f, upload_id)
    }

    /// Removes an upload's directory and everything in it. Missing is fine: removal is retried
    /// by the startup sweep, so it may already be gone.
    pub fn remove_upload(&self, upload_id: &str) -> io::Result<()> {
        match fs::remove_dir_all(self.upload_dir(upload_id)?) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes every upload directory not in `known` (the index's uploads): what a stop left
    /// between a commit and the removal that follows it (deletes, overwrites), and chunks of
    /// single-request uploads that never committed. Returns how many were removed. Call it
    /// before serving, while nothing writes.
    pub fn sweep_orphans(&self, known: &std::collections::HashSet<String>) -> io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if checked_id(name).is_ok() && !known.contains(name) {
                tracing::warn!(
                    upload_id = name,
                    "removing spool bytes that no index row owns"
                );
                fs::remove_dir_all(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Creates and removes an empty file in the spool, for `/readyz`: fails if the spool is gone,
    /// not a directory, read-only or out of inodes. Its name is no upload id, so a sweep leaves
    /// a probe file alone.
    pub fn probe_writable(&self) -> io::Result<()> {
        let path = self
            .root
            .join(format!(".ready-{:016x}", crate::crypto::random_u64()));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        fs::remove_file(&path)
    }

    /// Makes a written chunk file durable, as the durability setting demands: its data, and its
    /// name in the directory.
    pub fn finish_chunk(&self, file: File, upload_id: &str) -> io::Result<()> {
        if self.durability == Durability::Safe {
            file.sync_data()?;
            self.sync_dir(&self.upload_dir(upload_id)?)?;
        }
        Ok(())
    }
}
