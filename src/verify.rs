//! `chunkd verify`: an offline check of a data directory, and the repairs that are safe.
//!
//! It reads every chunk the index records through the same code that serves downloads
//! ([`download::read_chunk`]: both cipher layers, length, padding and hash), checks that every
//! complete upload has all its chunks and its recorded length, opens every thumbnail
//! ([`previews::open_thumb`]), and walks the spool for bytes no row owns.
//!
//! `--repair` fixes only what loses nothing: bytes no row owns are removed (they were never
//! acknowledged, or their rows were deleted), and chunks of incomplete uploads whose bytes are
//! missing or damaged are forgotten, so that their clients send them again (a probe answers
//! 204). A damaged complete file or thumbnail is only reported: its bytes cannot be sent again
//! by anyone, and an operator may still recover them from a backup.
//!
//! It takes the data directory's lock ([`lock_data_dir`]), so it refuses to run beside a live
//! server, and refuses a key file that is not the one the index was made with.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::app::lock_data_dir;
use crate::config::{Durability, VerifyArgs};
use crate::crypto::{FileCipher, GlobalKey};
use crate::store::{Index, Spool, Unowned};
use crate::{download, previews};

/// One thing wrong in the data directory.
#[derive(Debug)]
enum Problem {
    /// A chunk of a complete file is missing or does not decrypt to its recorded bytes.
    DamagedFile {
        upload: String,
        file: String,
        why: String,
    },
    /// A complete upload whose chunks do not make up its recorded geometry.
    IncompleteFile {
        upload: String,
        file: String,
        why: String,
    },
    /// A chunk of an incomplete upload whose bytes are missing or damaged.
    LostChunk {
        upload: String,
        number: u64,
        why: String,
    },
    /// A thumbnail that does not decrypt to its recorded bytes.
    DamagedThumbnail {
        upload: String,
        idx: u32,
        why: String,
    },
    /// Wrapped keys that cannot be unwrapped: nothing of the upload can be read.
    BadKeys { upload: String },
    /// A spool directory that no upload row owns.
    OrphanDir { path: PathBuf },
    /// A file in an upload's directory that no chunk or thumbnail row owns.
    StrayFile { path: PathBuf },
    /// Something in the spool chunkd never writes.
    Unexpected { path: PathBuf },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Problem::*;
        match self {
            DamagedFile { upload, file, why } => {
                write!(f, "damaged complete file {file} (upload {upload}): {why}")
            }
            IncompleteFile { upload, file, why } => {
                write!(
                    f,
                    "complete file {file} (upload {upload}) is not whole: {why}"
                )
            }
            LostChunk {
                upload,
                number,
                why,
            } => {
                write!(f, "chunk {number} of incomplete upload {upload}: {why}")
            }
            DamagedThumbnail { upload, idx, why } => {
                write!(f, "damaged thumbnail {idx} of upload {upload}: {why}")
            }
            BadKeys { upload } => write!(f, "upload {upload}: its wrapped keys are unreadable"),
            OrphanDir { path } => write!(f, "spool directory no upload owns: {}", path.display()),
            StrayFile { path } => write!(f, "spool file no row owns: {}", path.display()),
            Unexpected { path } => write!(f, "unexpected entry in the spool: {}", path.display()),
        }
    }
}

/// What one run found.
#[derive(Debug, Default)]
struct Report {
    files: usize,
    uploads: usize,
    chunks: usize,
    thumbnails: usize,
    problems: Vec<Problem>,
}

/// Why verify cannot run at all (exit status 2).
struct Refusal(String);

/// Runs the check and prints its report on stdout: one line per problem, then a summary. Exit
/// status 0 if the directory is clean (or was repaired clean), 1 if a problem remains, 2 if the
/// check cannot run (no index, a wrong key, a live server).
pub fn run(args: &VerifyArgs) -> ExitCode {
    match check(args) {
        Ok(remaining) => ExitCode::from(u8::from(remaining > 0)),
        Err(Refusal(why)) => {
            eprintln!("chunkd verify: {why}");
            ExitCode::from(2)
        }
    }
}

/// Checks (and repairs) the data directory; returns how many problems remain.
fn check(args: &VerifyArgs) -> Result<usize, Refusal> {
    let data = &args.data;
    let index_path = data.join("index.sqlite");
    if !index_path.is_file() {
        return Err(Refusal(format!(
            "{} holds no index: not a chunkd data directory",
            data.display()
        )));
    }
    let _lock = lock_data_dir(data).map_err(|e| Refusal(e.to_string()))?;
    let key_path = args
        .key_file
        .clone()
        .unwrap_or_else(|| data.join("chunkd.key"));
    if !key_path.is_file() {
        return Err(Refusal(format!("no key file at {}", key_path.display())));
    }
    let key = GlobalKey::load_or_create(&key_path).map_err(|e| Refusal(e.to_string()))?;
    let index = Index::open(&index_path, Durability::Safe)
        .map_err(|e| Refusal(format!("cannot open the index: {e}")))?;
    if !index
        .check_key(key.check_value())
        .map_err(|e| Refusal(format!("cannot read the index: {e}")))?
    {
        return Err(Refusal(format!(
            "the key file {} is not the key this data directory was created with",
            key_path.display()
        )));
    }
    let spool = Spool::open(data.join("spool"), Durability::Safe)
        .map_err(|e| Refusal(format!("cannot open the spool: {e}")))?;
    let report = scan(&index, &spool, &key).map_err(|e| Refusal(format!("check failed: {e}")))?;
    let mut remaining = 0;
    let mut repaired = 0;
    for p in &report.problems {
        let fixed = args.repair
            && repair(&index, &spool, p).map_err(|e| Refusal(format!("repair failed: {e}")))?;
        if fixed {
            repaired += 1;
            println!("{p} (repaired)");
        } else {
            remaining += 1;
            println!("{p}");
        }
    }
    println!(
        "chunkd verify: {} complete files, {} uploads, {} chunks, {} thumbnails checked; \
         {} problems, {repaired} repaired, {remaining} remaining",
        report.files,
        report.uploads,
        report.chunks,
        report.thumbnails,
        report.problems.len(),
    );
    Ok(remaining)
}

/// Reads everything the index records, and walks the spool.
fn scan(index: &Index, spool: &Spool, key: &GlobalKey) -> crate::Result<Report> {
    let mut report = Report::default();
    let mut ciphers: HashMap<String, FileCipher> = HashMap::new();
    for u in index.all_uploads()? {
        report.uploads += 1;
        let chunks = index.chunks(&u.id)?;
        let Some(cipher) = key.file_cipher(&u.wrapped_keys) else {
            report.problems.push(Problem::BadKeys { upload: u.id });
            continue;
        };
        let complete = u.completed_at.is_some();
        if complete {
            report.files += 1;
            if let Some(why) = geometry_gap(&u.shape, &chunks) {
                report.problems.push(Problem::IncompleteFile {
                    upload: u.id.clone(),
                    file: u.file_id.clone(),
                    why,
                });
            }
        }
        for c in &chunks {
            report.chunks += 1;
            let read = download::read_chunk(spool, &cipher, &u.id, c, 0, 0, &mut |_| true);
            if let Err(e) = read {
                let why = e.to_string();
                report.problems.push(if complete {
                    Problem::DamagedFile {
                        upload: u.id.clone(),
                        file: u.file_id.clone(),
                        why,
                    }
                } else {
                    Problem::LostChunk {
                        upload: u.id.clone(),
                        number: c.number,
                        why,
                    }
                });
            }
        }
        ciphers.insert(u.id, cipher);
    }
    for (upload, t) in index.all_thumbnails()? {
        report.thumbnails += 1;
        let Some(cipher) = ciphers.get(&upload) else {
            continue;
        };
        if let Err(e) = previews::open_thumb(spool, cipher, &upload, &t) {
            report.problems.push(Problem::DamagedThumbnail {
                upload,
                idx: t.idx,
                why: e.to_string(),
            });
        }
    }
    for entry in spool.unowned(&index.spool_names()?)? {
        report.problems.push(match entry {
            Unowned::Dir(path) => Problem::OrphanDir { path },
            Unowned::File(path) => Problem::StrayFile { path },
            Unowned::Other(path) => Problem::Unexpected { path },
        });
    }
    Ok(report)
}

/// Why a complete upload's chunks are not its whole file, if they are not: chunks 1 to
/// `total_chunks`, none missing, adding up to `total_size`.
fn geometry_gap(
    shape: &crate::geometry::Shape,
    chunks: &[crate::store::ChunkRow],
) -> Option<String> {
    let Some(total) = shape.total_chunks else {
        return Some("no chunk count recorded".into());
    };
    let numbers_ok = chunks.len() as u64 == total
        && chunks
            .iter()
            .enumerate()
            .all(|(i, c)| c.number == i as u64 + 1);
    if !numbers_ok {
        return Some(format!(
            "{} chunk rows where {total} are recorded",
            chunks.len()
        ));
    }
    let len: u64 = chunks.iter().map(|c| c.len).sum();
    (len != shape.total_size)
        .then(|| format!("its chunks hold {len} bytes, not {}", shape.total_size))
}

/// Repairs a problem if that is safe; returns whether it did.
fn repair(index: &Index, spool: &Spool, p: &Problem) -> crate::Result<bool> {
    match p {
        Problem::OrphanDir { path } => std::fs::remove_dir_all(path)?,
        Problem::StrayFile { path } => std::fs::remove_file(path)?,
        Problem::LostChunk { upload, number, .. } => {
            let chunk = index.chunk(upload, *number)?;
            index.forget_chunks(&[(upload.clone(), *number)])?;
            // Its bytes, if any, now belong to no row.
            if let Some(c) = chunk {
                spool.discard_chunk(upload, &c)?;
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}
