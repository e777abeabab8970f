//! Crash survival: the real `chunkd` binary, in the safe durability mode, is SIGKILLed at random
//! moments while clients upload (chunk endpoint and Files API), complete and delete files; it is
//! restarted on the same data directory and the clients resume through the status endpoint.
//!
//! After every restart: every chunk acknowledged with 200 before the kill is still committed,
//! and every acknowledged delete still holds. At the end: every file's SHA-256 matches, no upload
//! completed twice, and, after a last restart, every spool file belongs to an index row.
//!
//! A failure prints its seed; `CRASH_SEED=<n> cargo test --test crash` replays the same file
//! sizes, chunk orders and kill delays (the scheduling of threads stays the machine's).

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::binary::{Chunkd, Rng, audit, index};
use common::{Upload, data};
use serde_json::Value;
use sha2::{Digest, Sha256};

const API: &str = common::ACME_FILES;
const KILLS: usize = 15;
/// Chunk-endpoint files that join at each round, so that every round has fresh work to cut.
const CORE_PER_ROUND: usize = 3;
const LANES: usize = 3;
const FILES_PER_LANE: usize = 4;

/// A file sent through the chunk endpoint.
struct Core {
    up: Upload,
    /// Chunks answered 200.
    acked: BTreeSet<usize>,
    /// Replies that said `completed_now`.
    completions: usize,
    complete: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Create,
    Upload,
    Delete,
    Done,
}

/// One Files API client: creates a file, uploads it, checks it, deletes it (all but the last),
/// and goes on with the next.
struct Lane {
    k: usize,
    phase: Phase,
    file_id: Option<String>,
    acked: BTreeSet<usize>,
    /// Files whose delete was answered 200 (or 404 when sent again).
    deleted: Vec<String>,
}

impl Lane {
    fn upload(&self, lane: usize) -> Upload {
        let len = 70_000 + lane * 10_007 + self.k * 33_331;
        Upload::new(
            &format!("lane{lane}-{}", self.k),
            data(len, 1000 + (lane * 100 + self.k) as u64),
            32_768,
        )
    }
}

#[derive(Default)]
struct State {
    cores: Vec<Core>,
    lanes: Vec<Lane>,
    /// Anything a client met that is never allowed (a 500, a 4xx on a valid request, ...).
    failures: Vec<String>,
}

type Shared = Arc<Mutex<State>>;

fn sha(b: &[u8]) -> Vec<u8> {
    Sha256::digest(b).to_vec()
}

/// The transport failed: the server was killed under the request. Not an error.
type Cut = reqwest::Error;

async fn answer(resp: reqwest::Response) -> Result<(u16, Value, Vec<u8>), Cut> {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await?.to_vec();
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        bytes,
    ))
}

/// Sends chunk `n` of `up` to `url`, raw or multipart.
async fn send(
    http: &reqwest::Client,
    url: &str,
    up: &Upload,
    n: usize,
    multipart: bool,
    token: Option<&str>,
) -> Result<(u16, Value), Cut> {
    let body = up.chunk(n).to_vec();
    let sep = if url.contains('?') { '&' } else { '?' };
    let req = if multipart {
        let mut form = reqwest::multipart::Form::new();
        for (k, v) in up.params(n) {
            form = form.text(k, v);
        }
        let part = reqwest::multipart::Part::bytes(body).file_name(up.filename.clone());
        http.post(url).multipart(form.part("file", part))
    } else {
        http.post(format!("{url}{sep}{}", up.query(n)))
            .header("content-type", "application/octet-stream")
            .body(body)
    };
    let req = match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    };
    let (s, j, _) = answer(req.send().await?).await?;
    Ok((s, j))
}

fn fail(st: &Shared, what: String) {
    st.lock().unwrap().failures.push(what);
}

/// Resumes one chunk-endpoint file: asks the status endpoint what is committed, then sends the
/// rest in random order, two at a time.
async fn run_core(http: reqwest::Client, base: String, st: Shared, i: usize, seed: u64) {
    let up = st.lock().unwrap().cores[i].up.clone();
    let q = serde_urlencoded::to_string([("resumableIdentifier", &up.identifier)]).unwrap();
    let Ok(resp) = http.get(format!("{base}/upload/status?{q}")).send().await else {
        return;
    };
    let Ok((status, json, _)) = answer(resp).await else {
        return;
    };
    let received: BTreeSet<usize> = match status {
        404 => BTreeSet::new(),
        200 => {
            if json["complete"] == true {
                st.lock().unwrap().cores[i].complete = true;
                return;
            }
            json["received"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect()
        }
        s => return fail(&st, format!("status of {}: {s} {json}", up.identifier)),
    };
    let mut rng = Rng::seeded(seed);
    let mut missing: Vec<usize> = (1..=up.total_chunks())
        .filter(|n| !received.contains(n))
        .collect();
    rng.shuffle(&mut missing);
    let url = format!("{base}/upload");
    for pair in missing.chunks(2) {
        let replies = futures_util::future::join_all(
            pair.iter()
                .map(|&n| send(&http, &url, &up, n, (n + i).is_multiple_of(2), None)),
        )
        .await;
        let mut cut = false;
        for (&n, r) in pair.iter().zip(replies) {
            match r {
                Ok((200, json)) => {
                    let mut s = st.lock().unwrap();
                    let c = &mut s.cores[i];
                    c.acked.insert(n);
                    if json["completed_now"] == true {
                        c.completions += 1;
                    }
                    if json["complete"] == true {
                        c.complete = true;
                    }
                }
                Ok((s, json)) => fail(&st, format!("{} chunk {n}: {s} {json}", up.identifier)),
                Err(_) => cut = true,
            }
        }
        if cut {
            return;
        }
    }
}

/// Runs one Files API lane until it is done or the server goes away.
async fn run_lane(http: reqwest::Client, base: String, st: Shared, l: usize, token: String) {
    loop {
        let (phase, file_id, up, acked) = {
            let s = st.lock().unwrap();
            let lane = &s.lanes[l];
            (
                lane.phase,
                lane.file_id.clone(),
                lane.upload(l),
                lane.acked.clone(),
            )
        };
        let step: Result<(), Cut> = async {
            match phase {
                Phase::Done => Ok(()),
                Phase::Create => {
                    let (s, json, _) = answer(
                        http.post(format!("{base}{API}?filename={}", up.filename))
                            .bearer_auth(&token)
                            .header("content-type", "application/json")
                            .body("{}")
                            .send()
                            .await?,
                    )
                    .await?;
                    if s != 200 {
                        fail(&st, format!("create in lane {l}: {s} {json}"));
                        return Ok(());
                    }
                    let id = json["resource"]["id"].as_str().unwrap().to_string();
                    let mut s = st.lock().unwrap();
                    let lane = &mut s.lanes[l];
                    lane.file_id = Some(id);
                    lane.acked.clear();
                    lane.phase = Phase::Upload;
                    Ok(())
                }
                Phase::Upload => {
                    let id = file_id.unwrap();
                    let (s, _, bytes) = answer(
                        http.get(format!("{base}{API}/{id}/download"))
                            .bearer_auth(&token)
                            .send()
                            .await?,
                    )
                    .await?;
                    if s == 200 {
                        if sha(&bytes) != sha(&up.data) {
                            fail(&st, format!("lane {l} file {id}: served bytes differ"));
                        }
                        let mut s = st.lock().unwrap();
                        let lane = &mut s.lanes[l];
                        lane.phase = if lane.k + 1 == FILES_PER_LANE {
                            Phase::Done
                        } else {
                            Phase::Delete
                        };
                        return Ok(());
                    }
                    if s >= 500 || acked.len() == up.total_chunks() {
                        fail(&st, format!("lane {l} file {id}: download answers {s}"));
                        return Ok(());
                    }
                    let url = format!("{base}{API}/{id}");
                    for n in (1..=up.total_chunks()).filter(|n| !acked.contains(n)) {
                        let (s, json) = send(
                            &http,
                            &format!("{url}?{}", up.query(n)),
                            &up,
                            n,
                            true,
                            Some(&token),
                        )
                        .await?;
                        match s {
                            200 => {
                                st.lock().unwrap().lanes[l].acked.insert(n);
                            }
                            // Completed by a chunk whose reply the kill swallowed.
                            403 => return Ok(()),
                            _ => {
                                fail(&st, format!("lane {l} chunk {n}: {s} {json}"));
                                return Ok(());
                            }
                        }
                    }
                    Ok(())
                }
                Phase::Delete => {
                    let id = file_id.unwrap();
                    let (s, json, _) = answer(
                        http.delete(format!("{base}{API}/{id}"))
                            .bearer_auth(&token)
                            .send()
                            .await?,
                    )
                    .await?;
                    // 404: sent again after a kill that swallowed the first answer.
                    if s != 200 && s != 404 {
                        fail(&st, format!("delete in lane {l}: {s} {json}"));
                        return Ok(());
                    }
                    let mut s = st.lock().unwrap();
                    let lane = &mut s.lanes[l];
                    lane.deleted.push(id);
                    lane.k += 1;
                    lane.file_id = None;
                    lane.phase = Phase::Create;
                    Ok(())
                }
            }
        }
        .await;
        let s = st.lock().unwrap();
        if step.is_err() || s.lanes[l].phase == Phase::Done || !s.failures.is_empty() {
            return;
        }
    }
}

/// After a restart: what was acknowledged before the kill still holds.
async fn check_acknowledged(
    http: &reqwest::Client,
    base: &str,
    data_dir: &std::path::Path,
    st: &Shared,
    token: &str,
) {
    let (cores, lanes): (Vec<_>, Vec<_>) = {
        let s = st.lock().unwrap();
        (
            s.cores
                .iter()
                .map(|c| (c.up.clone(), c.acked.clone(), c.complete))
                .collect(),
            s.lanes
                .iter()
                .map(|l| {
                    (
                        l.phase,
                        l.file_id.clone(),
                        l.acked.clone(),
                        l.deleted.clone(),
                    )
                })
                .collect(),
        )
    };
    for (up, acked, complete) in cores {
        if acked.is_empty() {
            continue;
        }
        let q = serde_urlencoded::to_string([("resumableIdentifier", &up.identifier)]).unwrap();
        let (s, json, _) = answer(
            http.get(format!("{base}/upload/status?{q}"))
                .send()
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(
            s, 200,
            "{}: acknowledged chunks but no upload",
            up.identifier
        );
        let received: BTreeSet<usize> = json["received"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert!(
            acked.is_subset(&received),
            "{}: acknowledged {acked:?}, committed after the restart {received:?}",
            up.identifier
        );
        if complete {
            assert_eq!(json["complete"], true, "{}", up.identifier);
        }
        // And a probe agrees, chunk by chunk.
        let n = *acked.iter().next().unwrap();
        let probe = http
            .get(format!("{base}/upload?{}", up.query(n)))
            .send()
            .await
            .unwrap();
        assert_eq!(probe.status().as_u16(), 200, "{} probe {n}", up.identifier);
    }
    let db = index(data_dir);
    for (phase, file_id, acked, deleted) in lanes {
        if phase == Phase::Upload
            && let Some(id) = file_id
            && !acked.is_empty()
        {
            let mut q = db
                .prepare(
                    "SELECT c.number FROM files f JOIN chunks c \
                     ON c.upload_id = f.pending OR c.upload_id = f.content WHERE f.id = ?1",
                )
                .unwrap();
            let committed: BTreeSet<usize> = q
                .query_map([&id], |r| r.get::<_, i64>(0))
                .unwrap()
                .map(|n| n.unwrap() as usize)
                .collect();
            assert!(
                acked.is_subset(&committed),
                "Files API file {id}: acknowledged {acked:?}, committed {committed:?}"
            );
        }
        for id in deleted {
            let s = http
                .get(format!("{base}{API}/{id}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(s.as_u16(), 404, "deleted file {id} came back");
        }
    }
}

/// Starts every client that has work left on `server`.
fn clients(server: &Chunkd, st: &Shared, rng: &mut Rng, token: &str) -> tokio::task::JoinSet<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut set = tokio::task::JoinSet::new();
    let (cores, lanes) = {
        let s = st.lock().unwrap();
        (s.cores.len(), s.lanes.len())
    };
    for i in 0..cores {
        if !st.lock().unwrap().cores[i].complete {
            set.spawn(run_core(
                http.clone(),
                server.base.clone(),
                Arc::clone(st),
                i,
                rng.next(),
            ));
        }
    }
    for l in 0..lanes {
        set.spawn(run_lane(
            http.clone(),
            server.base.clone(),
            Arc::clone(st),
            l,
            token.to_string(),
        ));
    }
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_acknowledged_byte() {
    crash_run(&[]).await;
}

/// `--durability fast` leaves flushing to the OS: a power loss may lose acknowledged chunks,
/// but a crash of chunkd alone (the page cache survives it) loses nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_fast_mode_loses_no_acknowledged_byte_either() {
    crash_run(&["--durability", "fast"]).await;
}

async fn crash_run(args: &[&str]) {
    let started = Instant::now();
    let mut rng = Rng::from_env("CRASH_SEED");
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let token = common::user("alice", "acme");
    let st: Shared = Arc::new(Mutex::new(State {
        lanes: (0..LANES)
            .map(|_| Lane {
                k: 0,
                phase: Phase::Create,
                file_id: None,
                acked: BTreeSet::new(),
                deleted: Vec::new(),
            })
            .collect(),
        ..State::default()
    }));
    let http = reqwest::Client::new();
    let mut litter = 0;
    for round in 0..=KILLS {
        {
            let mut s = st.lock().unwrap();
            for _ in 0..CORE_PER_ROUND {
                let i = s.cores.len();
                let cs = [16_384, 65_536, 150_000][rng.range(0, 3) as usize];
                let t = rng.range(1, 7) as usize;
                let len = cs * t + rng.range(0, cs as u64) as usize;
                s.cores.push(Core {
                    up: Upload::new(&format!("crash-{i}"), data(len, i as u64), cs),
                    acked: BTreeSet::new(),
                    completions: 0,
                    complete: false,
                });
            }
        }
        let server = Chunkd::start(&data_dir, args);
        check_acknowledged(&http, &server.base, &data_dir, &st, &token).await;
        let mut set = clients(&server, &st, &mut rng, &token);
        if round < KILLS {
            let wait = rng.range(20, 600);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            server.kill();
            // The clients see their connections cut and stop.
            let _ = tokio::time::timeout(Duration::from_secs(20), async {
                while set.join_next().await.is_some() {}
            })
            .await;
            set.abort_all();
            let a = audit(&data_dir);
            assert!(
                a.missing.is_empty(),
                "round {round}: committed chunks without their bytes: {:?}",
                a.missing
            );
            litter += a.orphans.len() + a.litter.len();
            let s = st.lock().unwrap();
            let acked: usize = s.cores.iter().map(|c| c.acked.len()).sum();
            eprintln!(
                "round {round}: killed after {wait} ms; {acked} chunk-endpoint chunks acknowledged, \
                 {} spool entries and {} data files with bytes left without a row",
                a.orphans.len(),
                a.litter.len()
            );
        } else {
            // The last run: no kill; every client finishes.
            tokio::time::timeout(Duration::from_secs(60), async {
                while set.join_next().await.is_some() {}
            })
            .await
            .expect("the clients finish once chunkd stays up");
            let base = server.base.clone();
            // Every file is whole.
            let (files, kept, deleted) = {
                let s = st.lock().unwrap();
                assert!(s.failures.is_empty(), "{:#?}", s.failures);
                let files: Vec<(String, Upload, usize)> = s
                    .cores
                    .iter()
                    .map(|c| {
                        assert!(c.complete, "{} never completed", c.up.identifier);
                        (c.up.identifier.clone(), c.up.clone(), c.completions)
                    })
                    .collect();
                let kept: Vec<(String, Upload)> = s
                    .lanes
                    .iter()
                    .enumerate()
                    .map(|(l, lane)| {
                        assert_eq!(lane.phase, Phase::Done, "lane {l}");
                        (lane.file_id.clone().unwrap(), lane.upload(l))
                    })
                    .collect();
                let deleted: Vec<String> = s.lanes.iter().flat_map(|l| l.deleted.clone()).collect();
                (files, kept, deleted)
            };
            for (ident, up, completions) in &files {
                assert!(*completions <= 1, "{ident} completed {completions} times");
                let q = serde_urlencoded::to_string([("resumableIdentifier", ident)]).unwrap();
                let (_, st_json, _) = answer(
                    http.get(format!("{base}/upload/status?{q}"))
                        .send()
                        .await
                        .unwrap(),
                )
                .await
                .unwrap();
                let id = st_json["file_id"].as_str().unwrap();
                let (s, _, bytes) =
                    answer(http.get(format!("{base}/files/{id}")).send().await.unwrap())
                        .await
                        .unwrap();
                assert_eq!(s, 200);
                assert_eq!(sha(&bytes), sha(&up.data), "{ident}: served bytes differ");
            }
            assert_eq!(deleted.len(), LANES * (FILES_PER_LANE - 1));
            assert!(server.stop().success(), "SIGTERM is a clean exit");

            // A last start sweeps what the kills left; then the spool is exactly the index.
            let server = Chunkd::start(&data_dir, args);
            for (id, up) in &kept {
                let (s, _, bytes) = answer(
                    http.get(format!("{}{API}/{id}/download", server.base))
                        .bearer_auth(&token)
                        .send()
                        .await
                        .unwrap(),
                )
                .await
                .unwrap();
                assert_eq!(s, 200);
                assert_eq!(sha(&bytes), sha(&up.data), "Files API file {id}");
            }
            assert!(server.stop().success());
            let a = audit(&data_dir);
            assert!(a.clean(), "after the last restart: {a:?}");
            let db = index(&data_dir);
            for (ident, _, _) in &files {
                let (rows, done): (i64, i64) = db
                    .query_row(
                        "SELECT COUNT(*), COUNT(completed_at) FROM uploads WHERE identifier = ?1",
                        [ident],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .unwrap();
                assert_eq!((rows, done), (1, 1), "{ident}: one upload, completed once");
            }
            for (id, _) in &kept {
                let done: i64 = db
                    .query_row(
                        "SELECT COUNT(*) FROM uploads WHERE file_id = ?1 AND completed_at IS NOT NULL",
                        [id],
                        |r| r.get(0),
                    )
                    .unwrap();
                assert_eq!(done, 1, "Files API file {id}: one completed upload");
            }
            for id in &deleted {
                let rows: i64 = db
                    .query_row(
                        "SELECT (SELECT COUNT(*) FROM files WHERE id = ?1) + \
                         (SELECT COUNT(*) FROM uploads WHERE file_id = ?1)",
                        [id],
                        |r| r.get(0),
                    )
                    .unwrap();
                assert_eq!(rows, 0, "deleted file {id} has rows");
            }
            let completions: usize = files.iter().map(|f| f.2).sum();
            eprintln!(
                "{} kills, {} files, {completions} completions seen by clients, {litter} spool \
                 entries swept over the run, {:.1} s",
                KILLS,
                files.len() + kept.len() + deleted.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
}
