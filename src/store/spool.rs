//! The spool: encrypted chunks on disk, one directory and one data file per upload.
//!
//! The chunks of upload `U` are in `spool/U/data`; each write of a chunk gets a fresh region of
//! that file ([`Spool::reserve`]), and the chunk's index row records where its region starts
//! (`pos`). So two requests racing on the same chunk never touch each other's bytes, and the
//! index row decides which region counts; a region no row names is litter, never data, and its
//! blocks are given back when its write fails or loses ([`release_region`]). Thumbnails are
//! files of their own, `spool/U/t<idx>.<nonce>`. Every name is made by chunkd (upload ids are
//! UUIDs it generated), never from client strings.
//!
//! Why one file per upload, not one per chunk: creating a file costs the file system an inode,
//! and profiles of 1 MiB chunks showed ext4's inode allocation (it skips over inodes freed in
//! the last minutes, one by one) taking a fifth of the server's CPU. Chunks stored before data
//! files existed are in files of their own, `spool/U/<n>.<nonce>` (rows without `pos`); they are
//! still read from there.
//!
//! A region starts at the first page boundary past the regions handed out before it (their end
//! is kept in memory per upload) and past the data file's length (after a restart: nothing
//! committed lies past it, as a chunk's bytes are written before its row commits).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use dashmap::DashMap;

use super::ChunkRow;
use crate::config::Durability;
use crate::crypto::sealed_len;

/// The name of an upload's data file, in its directory.
pub const DATA_FILE: &str = "data";

/// Regions start on a page (and file system block) boundary: two writes never share a page,
/// and giving a region back frees every block it used, its last one included. A chunk takes
/// whole blocks on disk, as it did when it had a file of its own.
const ALIGN: u64 = 4096;

/// The most of a region allocated before its bytes arrive ([`Spool::reserve`]).
const PREALLOCATE: u64 = 128 << 20;

/// The spool directory and the durability it writes with.
pub struct Spool {
    root: PathBuf,
    durability: Durability,
    /// Per upload being written: the end of the regions of its data file handed out so far,
    /// and the file while a write holds it open.
    ends: DashMap<String, Writing>,
}

/// Where an upload's data file is being written ([`Spool::reserve`]).
struct Writing {
    end: u64,
    /// The file as the regions in flight hold it: the next region shares it while one does.
    file: Weak<File>,
}

/// A fresh region of an upload's data file, for one write of one chunk: `len` bytes from
/// `pos`, which no other write is given.
pub struct Region {
    /// Shared by the regions of one upload in flight at once.
    pub file: Arc<File>,
    pub pos: u64,
    pub len: u64,
}

/// Gives back the blocks of a region no row will name (its write failed, or another write of
/// the same chunk committed first), so that litter does not hold disk space until its upload
/// goes. Best effort: on a file system that cannot punch holes the bytes stay, owned by nobody,
/// until the upload is removed.
pub fn release_region(file: &File, pos: u64, len: u64) {
    use rustix::fs::{FallocateFlags, fallocate};
    let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    // Up to the next region's start: the rest of the last block is this region's too.
    let len = (pos + len).next_multiple_of(ALIGN) - pos;
    if let Err(e) = fallocate(file, flags, pos, len) {
        tracing::debug!(error = %e, "could not free the blocks of an uncommitted chunk");
    }
}

/// The first hole in `file` at or after `from`; `u64::MAX` where the file system cannot tell,
/// for which every file is all data.
fn first_hole(file: &File, from: u64) -> u64 {
    rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(from)).unwrap_or(u64::MAX)
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
        Ok(Spool {
            root,
            durability,
            ends: DashMap::new(),
        })
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

    /// The data file holding an upload's chunks.
    pub fn data_path(&self, upload_id: &str) -> io::Result<PathBuf> {
        Ok(self.upload_dir(upload_id)?.join(DATA_FILE))
    }

    /// The file of a chunk stored before data files existed (a row without `pos`).
    pub fn chunk_path(&self, upload_id: &str, number: u64, nonce: u64) -> io::Result<PathBuf> {
        Ok(self.upload_dir(upload_id)?.join(chunk_name(number, nonce)))
    }

    /// Opens an upload's data file for writing, creating it (and the upload's directory) for
    /// its first chunk.
    ///
    /// The directory may vanish meanwhile (a delete racing this write): it is made again, and
    /// the commit that follows finds the upload gone and removes it.
    fn open_data(&self, upload_id: &str) -> io::Result<File> {
        let dir = self.upload_dir(upload_id)?;
        let path = dir.join(DATA_FILE);
        let mut tries = 0;
        loop {
            if let Ok(f) = OpenOptions::new().write(true).open(&path) {
                return Ok(f);
            }
            if !dir.exists() {
                match fs::create_dir(&dir) {
                    Ok(()) => self.sync_dir(&self.root)?,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
            }
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => {
                    // Its name is durable before any chunk in it can commit.
                    self.sync_dir(&dir)?;
                    return Ok(f);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::AlreadyExists
                    ) && tries < 3 =>
                {
                    tries += 1
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether this process has reserved regions of the upload's data file: it then exists, and
    /// reserving another opens it and allocates blocks, without creating anything or syncing a
    /// directory.
    pub fn has_regions(&self, upload_id: &str) -> bool {
        self.ends.contains_key(upload_id)
    }

    /// A fresh region of `len` bytes of an upload's data file, for one write of one chunk.
    ///
    /// While another region of the upload is in flight, this one shares its open file: with
    /// several chunks of an upload in flight, most reservations open nothing. An open, a
    /// `statx`, a `dup` and two closes per chunk were 1.7% of a fast upload's server CPU in a
    /// profile; sharing saved 4-5% in alternating sets (BENCHMARKS.md, round 9). The file
    /// closes with the last region that holds it, so open files stay as many as the writes in
    /// flight.
    pub fn reserve(&self, upload_id: &str, len: u64) -> io::Result<Region> {
        // Decided and placed under the entry's lock: a completion or a removal that forgets
        // the end meanwhile cannot have this region start over the file's first bytes.
        let shared = self.ends.get_mut(upload_id).and_then(|mut w| {
            let file = w.file.upgrade()?;
            let pos = w.end.next_multiple_of(ALIGN);
            w.end = pos + len;
            Some((file, pos))
        });
        let (file, pos) = match shared {
            Some(placed) => placed,
            None => {
                let file = Arc::new(self.open_data(upload_id)?);
                // Past every byte written and every block allocated: after a restart (no
                // write in flight), the in-memory end starts from here, and nothing committed
                // lies past it.
                let covered = file.metadata()?.len();
                let mut w = self
                    .ends
                    .entry(upload_id.to_string())
                    .or_insert_with(|| Writing {
                        end: 0,
                        file: Weak::new(),
                    });
                let pos = w.end.max(covered).next_multiple_of(ALIGN);
                w.end = pos + len;
                if w.file.strong_count() == 0 {
                    w.file = Arc::downgrade(&file);
                }
                (file, pos)
            }
        };
        // The region's blocks are allocated now: that takes ext4's per-block delayed-allocation
        // work off every write (perf: 7% of the server's CPU on 1 MiB chunks), and a disk too
        // full for the chunk says so before any of it is written. Where it is not supported, the
        // writes allocate as they go. The file grows over what is allocated (ext4 punches no
        // holes past a file's end, and a region may have to be given back). At most
        // PREALLOCATE of it: a chunk whose size is not known yet gets a region as large as it
        // may be, which can be the whole file.
        use rustix::fs::{FallocateFlags, fallocate};
        match fallocate(&file, FallocateFlags::empty(), pos, len.min(PREALLOCATE)) {
            Err(e) if e == rustix::io::Errno::NOSPC || e == rustix::io::Errno::DQUOT => {
                return Err(e.into());
            }
            _ => {}
        }
        Ok(Region { file, pos, len })
    }

    /// Gives back every byte of an upload's data file outside the regions of `chunks` (its
    /// committed chunks): the litter of writes cut off by a crash, which no guard freed.
    /// Called when nothing more can commit into the file: on completion (a write still in
    /// flight then can only lose) and at start (nothing writes). Returns the disk space given
    /// back (none when an earlier trim or the writes' guards already did).
    pub fn trim(&self, upload_id: &str, chunks: &[ChunkRow]) -> io::Result<u64> {
        let file = match OpenOptions::new()
            .write(true)
            .open(self.data_path(upload_id)?)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        use std::os::unix::fs::MetadataExt;
        let before = file.metadata()?;
        let size = before.len();
        let mut regions: Vec<(u64, u64)> = chunks
            .iter()
            .filter_map(|c| Some((c.pos?, c.pos? + sealed_len(c.len))))
            .collect();
        regions.sort_unstable();
        regions.push((size, size));
        // Whole blocks only: the rest of a region's last block holds nothing to give back, and
        // zeroing it for every chunk made completions slow.
        let mut at = 0u64;
        for (start, end) in regions {
            let from = at.next_multiple_of(ALIGN);
            if start > from {
                release_region(&file, from, start - from);
            }
            at = at.max(end);
        }
        let after = file.metadata()?.blocks();
        Ok(before.blocks().saturating_sub(after) * 512)
    }

    /// Forgets an upload's region end once nothing more will be written to it (it completed).
    /// Safe at any time: the next reservation, if any, starts past the file's end.
    pub fn written_out(&self, upload_id: &str) {
        self.ends.remove(upload_id);
    }

    /// Makes a written region durable, as the durability setting demands. The data file's
    /// name was made durable when it was created.
    pub fn finish_region(&self, file: &File) -> io::Result<()> {
        if self.durability == Durability::Safe {
            file.sync_data()?;
        }
        Ok(())
    }

    /// Where a committed chunk's sealed bytes are: the file, where in it they start, and
    /// whether the file is the chunk's own (the layout before data files, a row without `pos`).
    fn chunk_place(&self, upload_id: &str, c: &ChunkRow) -> io::Result<(PathBuf, u64, bool)> {
        match c.pos {
            Some(pos) => Ok((self.data_path(upload_id)?, pos, false)),
            None => Ok((self.chunk_path(upload_id, c.number, c.nonce)?, 0, true)),
        }
    }

    /// Opens a committed chunk's sealed bytes: the file, and where in it they start.
    pub fn open_chunk(&self, upload_id: &str, c: &ChunkRow) -> io::Result<(File, u64)> {
        let (path, start, _) = self.chunk_place(upload_id, c)?;
        Ok((File::open(path)?, start))
    }

    /// Which of an upload's committed chunks have sealed bytes missing, by size and, in a data
    /// file, by allocation (the contents are checked when they are read): each with the reason.
    ///
    /// A region's blocks are allocated before its bytes are written, so after a power loss in
    /// `fast` mode a region can have its size but not its bytes: the file system then reports
    /// it as a hole (`SEEK_HOLE`), which this finds. Where the file system cannot tell, a file
    /// is all data, and only the size is checked.
    ///
    /// All of an upload's chunks are checked in one call: the data file is opened once and its
    /// holes are found walking forward. ext4 answers `SEEK_HOLE` on a file still in the page
    /// cache by walking it up to the next hole, so one seek from every region's start cost
    /// O(chunks x size): a download of a 1 GiB file just uploaded ran at 395-427 MB/s and
    /// 2.88-3.13 CPU-s/GiB that way, 762-1329 MB/s and 1.14-1.66 this way (BENCHMARKS.md,
    /// round 4).
    pub fn missing_chunks(&self, upload_id: &str, chunks: &[ChunkRow]) -> Vec<(u64, String)> {
        let mut missing = Vec::new();
        // Each chunk's file, the start and end of its bytes there, and its number, in file and
        // then offset order: each file is opened once and walked forward.
        let mut places = Vec::with_capacity(chunks.len());
        for c in chunks {
            match self.chunk_place(upload_id, c) {
                Ok((path, start, own)) => {
                    places.push((path, start, start + sealed_len(c.len), own, c.number))
                }
                Err(e) => missing.push((c.number, format!("chunk {}: {e}", c.number))),
            }
        }
        places.sort_unstable();
        // The file open now and its size, and the last hole found in it with where the seek that
        // found it started (no hole lies between).
        let mut current: Option<PathBuf> = None;
        let mut opened: Result<(File, u64), String> = Err(String::new());
        let mut known: Option<(u64, u64)> = None;
        for (path, start, end, own, number) in places {
            if current.as_ref() != Some(&path) {
                opened = File::open(&path)
                    .and_then(|f| {
                        let size = f.metadata()?.len();
                        Ok((f, size))
                    })
                    .map_err(|e| e.to_string());
                known = None;
                current = Some(path.clone());
            }
            let why = match &opened {
                Err(e) => Some(format!("{}: {e}", path.display())),
                // A file of its own holds the chunk exactly; a data file holds other regions too.
                Ok((_, size)) if *size < end || (own && *size != end) => Some(format!(
                    "{}: {size} bytes, chunk {number} needs {end}",
                    path.display()
                )),
                Ok((file, _)) => {
                    let hole = match known {
                        Some((from, hole)) if from <= start && start < hole => hole,
                        _ => {
                            let hole = first_hole(file, start);
                            known = Some((start, hole));
                            hole
                        }
                    };
                    (hole < end).then(|| {
                        format!(
                            "{}: chunk {number} has no bytes on disk from offset {hole}",
                            path.display()
                        )
                    })
                }
            };
            missing.extend(why.map(|why| (number, why)));
        }
        missing
    }

    /// Removes a committed chunk's bytes (its row is gone): frees its region, or removes its
    /// own file.
    pub fn discard_chunk(&self, upload_id: &str, c: &ChunkRow) -> io::Result<()> {
        let (path, start, own) = self.chunk_place(upload_id, c)?;
        if !own {
            // Best effort, as every release: a region no row names is never read.
            if let Ok(f) = OpenOptions::new().write(true).open(&path) {
                release_region(&f, start, sealed_len(c.len));
            }
            return Ok(());
        }
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The file of one write of thumbnail `idx` of an upload's content.
    pub fn thumb_path(&self, upload_id: &str, idx: u32, nonce: u64) -> io::Result<PathBuf> {
        Ok(self.upload_dir(upload_id)?.join(thumb_name(idx, nonce)))
    }

    /// Writes a whole sealed blob (a thumbnail) to a fresh file, durably as configured: its
    /// data, and its name in the directory.
    pub fn write_blob(&self, upload_id: &str, path: &Path, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
        f.write_all(bytes)?;
        if self.durability == Durability::Safe {
            f.sync_data()?;
            self.sync_dir(&self.upload_dir(upload_id)?)?;
        }
        Ok(())
    }

    /// Removes an upload's directory and everything in it. Missing is fine: removal is retried
    /// by the startup sweep, so it may already be gone. A chunk of the removed upload still
    /// being written may add a file meanwhile; the removal then goes round again.
    pub fn remove_upload(&self, upload_id: &str) -> io::Result<()> {
        let dir = self.upload_dir(upload_id)?;
        self.ends.remove(upload_id);
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

    /// Removes the upload directories and files no index row owns ([`Spool::unowned`]):
    /// directories of uploads whose rows are gone (a stop between a delete's or an overwrite's
    /// commit and the removal after it, a single-request upload that never committed), and,
    /// inside the directories of live uploads, files no row names (a thumbnail whose row never
    /// committed, a chunk file of the layout before data files whose row is gone). Anything else
    /// is not chunkd's and is left alone. Returns how many entries were removed. Call it before
    /// serving, while nothing writes.
    pub fn sweep_orphans(&self, owned: &HashMap<String, HashSet<String>>) -> io::Result<usize> {
        let mut removed = 0;
        for entry in self.unowned(owned)? {
            match entry {
                Unowned::Dir(path) => {
                    tracing::warn!(path = %path.display(), "removing spool bytes that no index row owns");
                    fs::remove_dir_all(path)?;
                }
                Unowned::File(path) => {
                    tracing::warn!(path = %path.display(), "removing a spool file that no index row names");
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};

    const ID: &str = "0123456789abcdef0123456789abcdef";

    fn row(number: u64, region: &Region, len: u64) -> ChunkRow {
        ChunkRow {
            number,
            len,
            nonce: number,
            hash: 0,
            pos: Some(region.pos),
        }
    }

    /// Regions in flight at once share one open file; the last one closes it, and the next
    /// region opens the file again and starts past everything before, as after a restart or a
    /// completion (which forget the in-memory end).
    #[test]
    fn regions_in_flight_share_their_file_and_close_it_with_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("spool"), Durability::Fast).unwrap();
        let a = spool.reserve(ID, 3 * ALIGN).unwrap();
        let b = spool.reserve(ID, ALIGN).unwrap();
        assert!(Arc::ptr_eq(&a.file, &b.file), "b shares a's file");
        assert_eq!(b.pos, a.pos + 3 * ALIGN);
        drop(a);
        let c = spool.reserve(ID, ALIGN).unwrap();
        assert!(
            Arc::ptr_eq(&b.file, &c.file),
            "c shares the file b still holds"
        );
        let held = Arc::downgrade(&c.file);
        drop((b, c));
        assert!(held.upgrade().is_none(), "closed with the last region");
        let d = spool.reserve(ID, ALIGN).unwrap();
        assert_eq!(d.pos, 5 * ALIGN);
        d.file.write_all_at(&[1; 10], d.pos).unwrap();
        let end = d.pos + ALIGN;
        drop(d);
        // The end forgotten (a completion), the file's length still says where free space
        // starts, even while a region still holds the file.
        spool.written_out(ID);
        let e = spool.reserve(ID, ALIGN).unwrap();
        assert_eq!(e.pos, end);
        spool.written_out(ID);
        let f = spool.reserve(ID, ALIGN).unwrap();
        assert_eq!(f.pos, end + ALIGN, "past e, which holds the file");
        assert_eq!(
            fs::metadata(spool.data_path(ID).unwrap()).unwrap().ino(),
            e.file.metadata().unwrap().ino()
        );
    }

    #[test]
    fn regions_never_overlap_and_trim_gives_back_only_what_no_row_names() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("spool"), Durability::Fast).unwrap();
        let len = 300_000u64;
        let sealed = sealed_len(len);
        let regions: Vec<Region> = (0..3).map(|_| spool.reserve(ID, sealed).unwrap()).collect();
        for w in regions.windows(2) {
            assert!(w[0].pos + w[0].len <= w[1].pos, "regions overlap");
            assert_eq!(w[1].pos % ALIGN, 0, "regions start on a page boundary");
        }
        // Chunks 1 and 3 commit; the write of chunk 2 was cut off halfway (no guard ran).
        for (i, r) in regions.iter().enumerate() {
            let n = if i == 1 { sealed / 2 } else { sealed };
            r.file
                .write_all_at(&vec![i as u8 + 1; n as usize], r.pos)
                .unwrap();
        }
        let rows = [row(1, &regions[0], len), row(3, &regions[2], len)];
        let blocks = |s: &Spool| fs::metadata(s.data_path(ID).unwrap()).unwrap().blocks() * 512;
        let before = blocks(&spool);
        let freed = spool.trim(ID, &rows).unwrap();
        assert!(
            freed >= sealed - 2 * ALIGN,
            "{freed} of the lost region's {sealed}"
        );
        assert_eq!(blocks(&spool), before - freed);
        assert_eq!(
            spool.trim(ID, &rows).unwrap(),
            0,
            "nothing more to give back"
        );
        // The committed regions are intact; after a restart, new regions start past all three.
        let data = fs::read(spool.data_path(ID).unwrap()).unwrap();
        for (i, r) in [(0, &regions[0]), (2, &regions[2])] {
            let bytes = &data[r.pos as usize..(r.pos + sealed) as usize];
            assert!(
                bytes.iter().all(|&b| b == i as u8 + 1),
                "region {i} damaged"
            );
        }
        let restarted = Spool::open(dir.path().join("spool"), Durability::Fast).unwrap();
        assert!(restarted.reserve(ID, 16).unwrap().pos >= regions[2].pos + sealed);
    }

    #[test]
    fn missing_chunks_are_found_in_one_walk_whatever_the_order_of_the_rows() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("spool"), Durability::Fast).unwrap();
        let len = 3 * ALIGN - 16;
        let sealed = sealed_len(len);
        let regions: Vec<Region> = (0..5).map(|_| spool.reserve(ID, sealed).unwrap()).collect();
        for r in &regions {
            r.file
                .write_all_at(&vec![1u8; sealed as usize], r.pos)
                .unwrap();
        }
        // Chunk 2 lost a page in its middle; region 4 is litter given back whole, between
        // chunks that are intact.
        release_region(&regions[1].file, regions[1].pos + ALIGN, ALIGN);
        release_region(&regions[3].file, regions[3].pos, sealed);
        let rows = [
            row(5, &regions[4], len),
            row(1, &regions[0], len),
            row(3, &regions[2], len),
            row(2, &regions[1], len),
            // Recorded past the end of the data file.
            ChunkRow {
                pos: Some(regions[4].pos + ALIGN),
                ..row(6, &regions[4], len)
            },
            // The layout before data files, its file gone.
            ChunkRow {
                pos: None,
                ..row(7, &regions[0], len)
            },
        ];
        let mut missing: Vec<u64> = spool
            .missing_chunks(ID, &rows)
            .into_iter()
            .map(|m| m.0)
            .collect();
        missing.sort_unstable();
        assert_eq!(missing, [2, 6, 7]);
        let intact = [row(1, &regions[0], len), row(5, &regions[4], len)];
        assert!(spool.missing_chunks(ID, &intact).is_empty());
    }

    #[test]
    fn a_released_region_holds_no_disk_space() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("spool"), Durability::Fast).unwrap();
        let r = spool.reserve(ID, 1 << 20).unwrap();
        r.file.write_all_at(&[7u8; 1 << 20], r.pos).unwrap();
        r.file.sync_all().unwrap();
        release_region(&r.file, r.pos, r.len);
        let meta = fs::metadata(spool.data_path(ID).unwrap()).unwrap();
        assert_eq!(meta.blocks(), 0, "every block of the region is given back");
    }
}
