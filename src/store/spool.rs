//! The spool: encrypted chunk files on disk, one directory per upload.
//!
//! Chunk `n` of upload `U`, written with nonce `N`, is `spool/U/n.N` (N as 16 hex digits). Every
//! name is made by chunkd (upload ids are UUIDs it generated), never from client strings. A write
//! always goes to a fresh file, so two requests racing on the same chunk never touch each other's
//! bytes; the index row decides which one counts. Files whose row never committed are litter,
//! never data.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::config::Durability;

/// The spool directory and the durability it writes with.
pub struct Spool {
    root: PathBuf,
    durability: Durability,
}

/// A spool entry that no index row owns.
#[derive(Debug, PartialEq, Eq)]
pub enum Unowned {
    /// The directory of an upload the index does not know.
    Dir(PathBuf),
    /// A file in a known upload's directory that no chunk or thumbnail row names.
    File(PathBuf),
    /// Anything else: not a name chunkd makes (readiness probes, an operator's files).
    Other(PathBuf),
}

fn sorted_entries(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut v = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<Vec<_>>>()?;
    v.sort();
    Ok(v)
}

/// The file name of one write of chunk `number`, in its upload's directory.
pub fn chunk_name(number: u64, nonce: u64) -> String {
    format!("{number}.{nonce:016x}")
}

/// The file name of one write of thumbnail `idx`, in its upload's directory.
pub fn thumb_name(idx: u32, nonce: u64) -> String {
    format!("t{idx}.{nonce:016x}")
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
        Ok(self.upload_dir(upload_id)?.join(chunk_name(number, nonce)))
    }

    /// Creates a fresh chunk file (and the upload's directory on its first chunk).
    ///
    /// The directory may vanish between the two steps (a delete racing this write): it is made
    /// again, and the commit that follows finds the upload gone and removes it.
    pub fn create_chunk(&self, upload_id: &str, number: u64, nonce: u64) -> io::Result<File> {
        let dir = self.upload_dir(upload_id)?;
        let path = self.chunk_path(upload_id, number, nonce)?;
        let mut tries = 0;
        loop {
            if !dir.exists() {
                match fs::create_dir(&dir) {
                    Ok(()) => self.sync_dir(&self.root)?,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
            }
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 3 => tries += 1,
                other => return other,
            }
        }
    }

    /// The file of one write of thumbnail `idx` of an upload's content.
    pub fn thumb_path(&self, upload_id: &str, idx: u32, nonce: u64) -> io::Result<PathBuf> {
        Ok(self.upload_dir(upload_id)?.join(thumb_name(idx, nonce)))
    }

    /// Writes a whole sealed blob (a thumbnail) to a fresh file, durably as configured.
    pub fn write_blob(&self, upload_id: &str, path: &Path, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
        f.write_all(bytes)?;
        self.finish_chunk(f, upload_id)
    }

    /// Removes an upload's directory and everything in it. Missing is fine: removal is retried
    /// by the startup sweep, so it may already be gone. A chunk of the removed upload still
    /// being written may add a file meanwhile; the removal then goes round again.
    pub fn remove_upload(&self, upload_id: &str) -> io::Result<()> {
        let dir = self.upload_dir(upload_id)?;
        let mut tries = 0;
        loop {
            match fs::remove_dir_all(&dir) {
                Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty && tries < 3 => tries += 1,
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => return Ok(()),
            }
        }
    }

    /// Lists, sorted, every spool entry no index row owns, given `owned` (every upload id, with
    /// the file names of its committed chunks and thumbnails: [`Index::spool_names`]). The one
    /// walk behind the start-up sweep and `chunkd verify`.
    ///
    /// [`Index::spool_names`]: super::Index::spool_names
    pub fn unowned(&self, owned: &HashMap<String, HashSet<String>>) -> io::Result<Vec<Unowned>> {
        let mut found = Vec::new();
        for entry in sorted_entries(&self.root)? {
            let name = entry
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let is_upload = checked_id(name).is_ok() && entry.is_dir();
            match owned.get(name) {
                Some(files) if is_upload => {
                    for file in sorted_entries(&entry)? {
                        let fname = file.file_name().and_then(|n| n.to_str());
                        if !fname.is_some_and(|f| files.contains(f)) {
                            found.push(Unowned::File(file));
                        }
                    }
                }
                None if is_upload => found.push(Unowned::Dir(entry)),
                _ => found.push(Unowned::Other(entry)),
            }
        }
        Ok(found)
    }

    /// Removes the upload directories and chunk files no index row owns ([`Spool::unowned`]):
    /// directories of uploads whose rows are gone (a stop between a delete's or an overwrite's
    /// commit and the removal after it, a single-request upload that never committed), and,
    /// inside the directories of live uploads, chunk files whose row never committed (a stop
    /// while a chunk was being written or made durable). Anything else is not chunkd's and is
    /// left alone. Returns how many entries were removed. Call it before serving, while nothing
    /// writes.
    pub fn sweep_orphans(&self, owned: &HashMap<String, HashSet<String>>) -> io::Result<usize> {
        let mut removed = 0;
        for entry in self.unowned(owned)? {
            match entry {
                Unowned::Dir(path) => {
                    tracing::warn!(path = %path.display(), "removing spool bytes that no index row owns");
                    fs::remove_dir_all(path)?;
                }
                Unowned::File(path) => {
                    tracing::warn!(path = %path.display(), "removing a chunk file whose row never committed");
                    fs::remove_file(path)?;
                }
                Unowned::Other(_) => continue,
            }
            removed += 1;
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
