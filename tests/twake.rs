//! The Twake Files API over real TCP: the front end's own flow, single-request uploads with
//! thumbnails, auth failures, company isolation on every route, overwrite rules, deletion.

mod common;

use std::path::Path;

use chunkd::Config;
use chunkd::auth::{Claims, JwtKey};
use common::{SECRET, TestServer, application, claims, data, files_under, mint, now, png, user};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const API: &str = "/internal/services/files/v1/companies";

fn config(dir: &Path) -> Config {
    let mut c = Config::for_data_dir(dir);
    c.auth.secret.value = Some(SECRET.into());
    c
}

fn sha(b: &[u8]) -> Vec<u8> {
    Sha256::digest(b).to_vec()
}

/// A client of the Files API on one server.
struct Api {
    http: reqwest::Client,
    base: String,
}

struct Answer {
    status: StatusCode,
    json: Value,
    bytes: Vec<u8>,
    headers: reqwest::header::HeaderMap,
}

impl Api {
    fn new(server: &TestServer) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: server.url(""),
        }
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> Answer {
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap().to_vec();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            json,
            bytes,
            headers,
        }
    }

    fn req(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// The front end's init call: query parameters, body `{}`.
    async fn create(&self, company: &str, token: &str, query: &str) -> Answer {
        let r = self
            .req(
                Method::POST,
                &format!("{API}/{company}/files?{query}"),
                Some(token),
            )
            .header("content-type", "application/json")
            .body("{}");
        self.call(r).await
    }

    /// A Resumable.js chunk as the front end sends it: multipart, all parameters in both the
    /// query and the form, `thumbnail_sync=1`.
    #[allow(clippy::too_many_arguments)]
    async fn chunk(
        &self,
        company: &str,
        id: &str,
        token: &str,
        file: &[u8],
        name: &str,
        cs: usize,
        n: usize,
    ) -> Answer {
        let total = (file.len() / cs).max(1);
        let start = (n - 1) * cs;
        let end = if n == total { file.len() } else { start + cs };
        let params = vec![
            ("resumableChunkNumber", n.to_string()),
            ("resumableChunkSize", cs.to_string()),
            ("resumableCurrentChunkSize", (end - start).to_string()),
            ("resumableTotalSize", file.len().to_string()),
            ("resumableType", "application/octet-stream".to_string()),
            ("resumableIdentifier", format!("{}-{name}", file.len())),
            ("resumableFilename", name.to_string()),
            ("resumableRelativePath", name.to_string()),
            ("resumableTotalChunks", total.to_string()),
        ];
        let mut form = reqwest::multipart::Form::new();
        for (k, v) in &params {
            form = form.text(k.to_string(), v.clone());
        }
        form = form.part(
            "file",
            reqwest::multipart::Part::bytes(file[start..end].to_vec()).file_name("blob"),
        );
        let mut q = serde_urlencoded::to_string(&params).unwrap();
        q.push_str("&thumbnail_sync=1");
        let r = self
            .req(
                Method::POST,
                &format!("{API}/{company}/files/{id}?{q}"),
                Some(token),
            )
            .multipart(form);
        self.call(r).await
    }

    /// Uploads all chunks of `file` in order, returns the last answer.
    async fn chunks(&self, company: &str, id: &str, token: &str, file: &[u8], cs: usize) -> Answer {
        let total = (file.len() / cs).max(1);
        let mut last = None;
        for n in 1..=total {
            let a = self.chunk(company, id, token, file, "f.bin", cs, n).await;
            assert_eq!(a.status, 200, "chunk {n}: {}", a.json);
            last = Some(a);
        }
        last.unwrap()
    }

    /// The single-request upload.
    async fn classic(
        &self,
        company: &str,
        token: &str,
        name: &str,
        mime: &str,
        file: Vec<u8>,
    ) -> Answer {
        let part = reqwest::multipart::Part::bytes(file)
            .file_name(name.to_string())
            .mime_str(mime)
            .unwrap();
        let form = reqwest::multipart::Form::new().part("file", part);
        let r = self
            .req(
                Method::POST,
                &format!("{API}/{company}/files?thumbnail_sync=1"),
                Some(token),
            )
            .multipart(form);
        self.call(r).await
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.call(self.req(Method::GET, path, token)).await
    }
}

fn spool_dirs(data: &Path) -> usize {
    std::fs::read_dir(data.join("spool")).unwrap().count()
}

/// The real front end's flow: init with the query and `{}`, then 50 MB Resumable.js chunks
/// (the last one 99,999,999 bytes), 5 at once, `thumbnail_sync=1`; metadata; a byte-identical
/// download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_end_flow() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path()));
    let api = Api::new(&server);
    let token = user("alice", "acme");
    let file = data(149_999_999, 1);
    let cs = 50_000_000;

    let init = api
        .create(
            "acme",
            &token,
            "filename=big%20video.mp4&type=video%2Fmp4&total_size=149999999",
        )
        .await;
    assert_eq!(init.status, 200, "{}", init.json);
    let r = &init.json["resource"];
    let id = r["id"].as_str().unwrap().to_string();
    assert_eq!(r["company_id"], "acme");
    assert_eq!(r["user_id"], "alice");
    assert_eq!(r["metadata"]["name"], "big video.mp4");
    assert_eq!(r["metadata"]["mime"], "video/mp4");
    assert_eq!(r["upload_data"]["size"], 149_999_999u64);
    assert_eq!(r["encryption_key"], "");

    // Both chunks at once (simultaneousUploads: 5 sends every chunk of a 2-chunk file at once).
    let (a, b) = tokio::join!(
        api.chunk("acme", &id, &token, &file, "big video.mp4", cs, 2),
        api.chunk("acme", &id, &token, &file, "big video.mp4", cs, 1),
    );
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(b.status, 200, "{}", b.json);
    for ans in [&a, &b] {
        assert_eq!(ans.json["resource"]["id"], id.as_str());
    }
    // Whichever finished last carries the final upload_data.
    let last = if a.json["resource"]["upload_data"]["chunks"] == 2 {
        &a
    } else {
        &b
    };
    assert_eq!(last.json["resource"]["upload_data"]["size"], 149_999_999u64);
    assert_eq!(last.json["resource"]["upload_data"]["chunks"], 2);

    let meta = api
        .get(&format!("{API}/acme/files/{id}"), Some(&token))
        .await;
    assert_eq!(meta.status, 200);
    let r = &meta.json["resource"];
    let keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
    for k in [
        "company_id",
        "id",
        "application_id",
        "user_id",
        "created_at",
        "updated_at",
        "metadata",
        "thumbnails",
        "upload_data",
        "encryption_key",
    ] {
        assert!(keys.contains(&k), "resource lacks {k}: {r}");
    }
    assert!(r["created_at"].as_i64().unwrap() > 1_600_000_000_000);
    assert!(r["updated_at"].as_i64().unwrap() >= r["created_at"].as_i64().unwrap());
    // Not an image: nothing to preview, and the status says so honestly.
    assert_eq!(r["metadata"]["thumbnails_status"], "done");
    assert_eq!(r["thumbnails"], json!([]));

    let dl = api
        .get(&format!("{API}/acme/files/{id}/download"), Some(&token))
        .await;
    assert_eq!(dl.status, 200);
    assert_eq!(dl.bytes.len(), file.len());
    assert_eq!(sha(&dl.bytes), sha(&file));
    let cd = dl.headers["content-disposition"].to_str().unwrap();
    assert!(cd.contains("big%20video.mp4"), "{cd}");

    // Range through the Files API route too.
    let part = api
        .call(
            api.req(
                Method::GET,
                &format!("{API}/acme/files/{id}/download"),
                Some(&token),
            )
            .header("range", "bytes=49999990-50000009"),
        )
        .await;
    assert_eq!(part.status, 206);
    assert_eq!(part.bytes, file[49_999_990..50_000_010]);
}

/// A single-request PNG upload with `thumbnail_sync=1` answers with its thumbnail, which opens
/// from a plain link (a signed URL) and fits in 600×400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_upload_with_thumbnail() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path()));
    let api = Api::new(&server);
    let token = user("bob", "acme");
    let image = png(1500, 900);
    let up = api
        .classic("acme", &token, "photo.png", "image/png", image.clone())
        .await;
    assert_eq!(up.status, 200, "{}", up.json);
    let r = &up.json["resource"];
    assert_eq!(r["metadata"]["name"], "photo.png");
    assert_eq!(r["metadata"]["mime"], "image/png");
    assert_eq!(r["metadata"]["thumbnails_status"], "done", "{r}");
    assert_eq!(r["upload_data"]["size"], image.len());
    let thumbs = r["thumbnails"].as_array().unwrap();
    assert_eq!(thumbs.len(), 1);
    let t = &thumbs[0];
    assert_eq!(t["index"], 0);
    assert_eq!(t["type"], "image/png");
    assert_eq!(
        (t["width"].as_u64(), t["height"].as_u64()),
        (Some(600), Some(360))
    );
    let url = t["url"].as_str().unwrap();
    assert!(url.contains("sig="), "a signed link: {url}");

    // An <img src> sends no header: the signed link alone works.
    let got = api.get(url, None).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.headers["content-type"], "image/png");
    assert_eq!(t["size"].as_u64().unwrap(), got.bytes.len() as u64);
    let decoded = image::load_from_memory(&got.bytes).unwrap();
    assert!(decoded.width() <= 600 && decoded.height() <= 400);
    assert_eq!(decoded.width(), 600);

    // Without the signature, or with a tampered one, the thumbnail is not public.
    let bare = url.split('?').next().unwrap();
    assert_eq!(api.get(bare, None).await.status, 401);
    let tampered = format!("{}x", url);
    assert_eq!(api.get(&tampered, None).await.status, 401);
    // A member's token works without the signature.
    assert_eq!(api.get(bare, Some(&token)).await.status, 200);

    // The file itself round-trips.
    let id = r["id"].as_str().unwrap();
    let dl = api
        .get(&format!("{API}/acme/files/{id}/download"), Some(&token))
        .await;
    assert_eq!(sha(&dl.bytes), sha(&image));
    // The thumbnail is encrypted at rest like everything else: no PNG signature in the spool.
    for f in files_under(&dir.path().join("spool")) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.starts_with(b"\x89PNG"),
            "{} is plaintext",
            f.display()
        );
    }
}

/// A large single-request upload is streamed into several stored pieces and reads back whole;
/// images that cannot be decoded get an honest `error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_upload_large_and_broken_images() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path()));
    let api = Api::new(&server);
    let token = user("bob", "acme");
    let file = data(20_000_003, 2);
    let up = api
        .classic(
            "acme",
            &token,
            "data.bin",
            "application/octet-stream",
            file.clone(),
        )
        .await;
    assert_eq!(up.status, 200, "{}", up.json);
    let id = up.json["resource"]["id"].as_str().unwrap().to_string();
    assert_eq!(up.json["resource"]["upload_data"]["size"], 20_000_003u64);
    let dl = api
        .get(&format!("{API}/acme/files/{id}/download"), Some(&token))
        .await;
    assert_eq!(sha(&dl.bytes), sha(&file));

    // A truncated PNG: the preview fails, and says so.
    let mut broken = png(800, 600);
    broken.truncate(broken.len() / 2);
    let up = api
        .classic("acme", &token, "broken.png", "image/png", broken)
        .await;
    assert_eq!(up.status, 200);
    assert_eq!(
        up.json["resource"]["metadata"]["thumbnails_status"],
        "error"
    );
    assert_eq!(up.json["resource"]["thumbnails"], json!([]));
    let id = up.json["resource"]["id"].as_str().unwrap();
    let t = api
        .get(&format!("{API}/acme/files/{id}/thumbnails/0"), Some(&token))
        .await;
    assert_eq!(t.status, 404);
    assert_eq!(t.json["error"], "not_found");
}

/// Chunked uploads of an image get their thumbnail too, whatever the number of chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_image_gets_a_thumbnail() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path()));
    let api = Api::new(&server);
    let token = user("carol", "acme");
    let image = png(700, 1400);
    let cs = image.len() / 3;
    let init = api
        .create(
            "acme",
            &token,
            &format!(
                "filename=tall.png&type=image%2Fpng&total_size={}",
                image.len()
            ),
        )
        .await;
    let id = init.json["resource"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        init.json["resource"]["metadata"]["thumbnails_status"],
        "waiting"
    );
    let last = api.chunks("acme", &id, &token, &image, cs).await;
    let r = &last.json["resource"];
    assert_eq!(r["metadata"]["thumbnails_status"], "done", "{r}");
    assert_eq!(r["thumbnails"][0]["height"], 400);
    assert_eq!(r["thumbnails"][0]["width"], 200);
}

/// Tokens: missing, malformed, wrongly signed, `alg: none`, other algorithms, expired, not yet
/// valid: all 401 with a JSON error. A valid token of another company: 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_failures() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path()));
    let api = Api::new(&server);
    let path = format!("{API}/acme/files?filename=a.txt");
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let good = user("alice", "acme");
    let payload = good.split('.').nth(1).unwrap();
    let sig = good.split('.').nth(2).unwrap();
    let expired = mint(&Claims {
        exp: now() - 60,
        ..claims("alice", &["acme"], None)
    });
    let early = mint(&Claims {
        nbf: Some(now() + 3600),
        ..claims("alice", &["acme"], None)
    });
    let other_key = JwtKey::new(b"another secret, also long enough for HS256 use").unwrap();
    let wrong_sig = other_key.mint(&claims("alice", &["acme"], None));
    let none = format!("{}.{payload}.", b64(&json!({"alg": "none", "typ": "JWT"})));
    let rs256 = format!(
        "{}.{payload}.{sig}",
        b64(&json!({"alg": "RS256", "typ": "JWT"}))
    );
    let no_exp = {
        let header = good.split('.').next().unwrap();
        let body = b64(&json!({"sub": "alice", "companies": ["acme"]}));
        // Signed correctly, but without `exp`.
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
        let tag = ring::hmac::sign(&key, format!("{header}.{body}").as_bytes());
        use base64::Engine;
        let s = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref());
        format!("{header}.{body}.{s}")
    };
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("garbage", Some("not-a-token".into())),
        ("wrong signature", Some(wrong_sig)),
        ("alg none", Some(none)),
        ("alg RS256", Some(rs256)),
        ("expired", Some(expired)),
        ("not yet valid", Some(early)),
        ("no exp", Some(no_exp)),
    ];
    for (what, token) in cases {
        let a = api
            .call(
                api.req(Method::POST, &path, token.as_deref())
                    .header("content-type", "application/json")
                    .body("{}"),
            )
            .await;
        assert_eq!(a.status, 401, "{what}: {}", a.json);
        assert_eq!(a.json["error"], "unauthorized", "{what}");
        assert!(a.json["message"].as_str().unwrap().len() > 5, "{what}");
        assert!(a.headers.contains_key("www-authenticate"), "{what}");
    }
    let a = api.create("other", &good, "filename=a.txt").await;
    assert_eq!(a.status, 403, "{}", a.json);
    assert_eq!(a.json["error"], "forbidden");
    assert_eq!(
        api.create("acme", &good, "filename=a.txt").await.status,
        200
    );
}

/// No route lets one company touch another's file: a token of the other company is refused
/// (403), and the file id under one's own company is not found (404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn companies_are_isolated_on_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path()));
    let api = Api::new(&server);
    let alice = user("alice", "acme");
    let eve = user("eve", "evil");
    let file = data(300_000, 3);
    let up = api
        .classic("acme", &alice, "secret.png", "image/png", png(100, 100))
        .await;
    let id = up.json["resource"]["id"].as_str().unwrap().to_string();
    let thumb_url = up.json["resource"]["thumbnails"][0]["url"]
        .as_str()
        .unwrap()
        .to_string();
    let sig = thumb_url.split_once('?').unwrap().1.to_string();

    let routes: Vec<(Method, String)> = vec![
        (Method::GET, format!("{API}/acme/files/{id}")),
        (Method::GET, format!("{API}/acme/files/{id}/download")),
        (Method::GET, format!("{API}/acme/files/{id}/thumbnails/0")),
        (Method::DELETE, format!("{API}/acme/files/{id}")),
        (
            Method::POST,
            format!(
                "{API}/acme/files/{id}?resumableChunkNumber=1&resumableTotalSize=300000&resumableFilename=x"
            ),
        ),
        (Method::POST, format!("{API}/acme/files")),
    ];
    for (m, path) in &routes {
        // Only chunk calls carry a body.
        let body = if *m == Method::POST {
            file.clone()
        } else {
            Vec::new()
        };
        // Eve's token is valid, but not for acme.
        let a = api
            .call(api.req(m.clone(), path, Some(&eve)).body(body.clone()))
            .await;
        assert_eq!(a.status, 403, "{m} {path}: {}", a.json);
        // Under her own company, alice's file does not exist.
        let own = path.replace("/acme/", "/evil/");
        let a = api
            .call(api.req(m.clone(), &own, Some(&eve)).body(body))
            .await;
        if own.ends_with("/files") {
            continue;
        }
        assert_eq!(a.status, 404, "{m} {own}: {}", a.json);
        assert_eq!(a.json["error"], "not_found");
    }
    // A signed link is bound to its company and file.
    let moved = format!("{API}/evil/files/{id}/thumbnails/0?{sig}");
    assert_eq!(api.get(&moved, None).await.status, 401);
    // Alice still has everything.
    assert_eq!(
        api.get(&format!("{API}/acme/files/{id}"), Some(&alice))
            .await
            .status,
        200
    );
    assert_eq!(api.get(&thumb_url, None).await.status, 200);
}

/// A user may write into a file only until it is complete; an application may overwrite it.
/// The old content stays whole until the new upload completes, and an abandoned overwrite never
/// damages it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_rules() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path()));
    let api = Api::new(&server);
    let alice = user("alice", "acme");
    let bot = application("bot", "acme");
    let v1 = data(3_000_000, 4);
    let v2 = data(2_500_000, 5);
    let cs = 1_000_000;
    let init = api.create("acme", &alice, "filename=f.bin").await;
    let id = init.json["resource"]["id"].as_str().unwrap().to_string();
    let dl_path = format!("{API}/acme/files/{id}/download");

    // Before completion the file has no bytes to download.
    api.chunk("acme", &id, &alice, &v1, "f.bin", cs, 1).await;
    assert_eq!(api.get(&dl_path, Some(&alice)).await.status, 404);
    // Another member of the company may help finish it.
    let bob = user("bob", "acme");
    api.chunk("acme", &id, &bob, &v1, "f.bin", cs, 2).await;
    let done = api.chunk("acme", &id, &alice, &v1, "f.bin", cs, 3).await;
    assert_eq!(done.json["resource"]["upload_data"]["size"], 3_000_000);
    assert_eq!(sha(&api.get(&dl_path, Some(&alice)).await.bytes), sha(&v1));

    // Complete: a user's write is refused, and changes nothing.
    let denied = api.chunk("acme", &id, &alice, &v2, "f.bin", cs, 1).await;
    assert_eq!(denied.status, 403, "{}", denied.json);
    assert_eq!(denied.json["error"], "forbidden");
    assert_eq!(sha(&api.get(&dl_path, Some(&alice)).await.bytes), sha(&v1));

    // An application's overwrite: the old content is served until the new one completes.
    let spool_before = spool_dirs(dir.path());
    let a = api.chunk("acme", &id, &bot, &v2, "f.bin", cs, 1).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(sha(&api.get(&dl_path, Some(&alice)).await.bytes), sha(&v1));
    // Meanwhile users still cannot write into it.
    assert_eq!(
        api.chunk("acme", &id, &alice, &v2, "f.bin", cs, 2)
            .await
            .status,
        403
    );
    let b = api.chunk("acme", &id, &bot, &v2, "f.bin", cs, 2).await;
    assert_eq!(b.status, 200, "{}", b.json);
    assert_eq!(b.json["resource"]["upload_data"]["size"], 2_500_000);
    let after = api.get(&dl_path, Some(&alice)).await;
    assert_eq!(after.bytes.len(), v2.len());
    assert_eq!(sha(&after.bytes), sha(&v2));
    // The old content's bytes are gone from the spool.
    assert_eq!(spool_dirs(dir.path()), spool_before);

    // An abandoned overwrite leaves the current content whole, across a restart too.
    let v3 = data(2_000_000, 6);
    assert_eq!(
        api.chunk("acme", &id, &bot, &v3, "f.bin", cs, 1)
            .await
            .status,
        200
    );
    let data_dir = server.data.clone();
    server.stop();
    let server = TestServer::start_with(config(&data_dir));
    let api = Api::new(&server);
    assert_eq!(sha(&api.get(&dl_path, Some(&alice)).await.bytes), sha(&v2));
}

/// Delete answers `{"status":"success"}`, then every route answers 404, and no byte is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_then_404() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path()));
    let api = Api::new(&server);
    let alice = user("alice", "acme");
    let up = api
        .classic("acme", &alice, "p.png", "image/png", png(64, 64))
        .await;
    let id = up.json["resource"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        up.json["resource"]["thumbnails"].as_array().unwrap().len(),
        1
    );
    // Also a file with an upload in progress.
    let init = api.create("acme", &alice, "filename=half.bin").await;
    let half = init.json["resource"]["id"].as_str().unwrap().to_string();
    api.chunk(
        "acme",
        &half,
        &alice,
        &data(2_000_000, 7),
        "half.bin",
        1_000_000,
        1,
    )
    .await;
    assert!(!files_under(&dir.path().join("spool")).is_empty());

    for f in [&id, &half] {
        let del = api
            .call(api.req(
                Method::DELETE,
                &format!("{API}/acme/files/{f}"),
                Some(&alice),
            ))
            .await;
        assert_eq!(del.status, 200);
        assert_eq!(del.json, json!({"status": "success"}));
    }
    for path in [
        format!("{API}/acme/files/{id}"),
        format!("{API}/acme/files/{id}/download"),
        format!("{API}/acme/files/{id}/thumbnails/0"),
    ] {
        let a = api.get(&path, Some(&alice)).await;
        assert_eq!(a.status, 404, "{path}");
        assert_eq!(a.json["error"], "not_found");
    }
    let again = api
        .call(api.req(
            Method::DELETE,
            &format!("{API}/acme/files/{id}"),
            Some(&alice),
        ))
        .await;
    assert_eq!(again.status, 404);
    assert!(files_under(&dir.path().join("spool")).is_empty());
    // A chunk for the deleted file is refused too.
    let late = api
        .chunk(
            "acme",
            &half,
            &alice,
            &data(2_000_000, 7),
            "half.bin",
            1_000_000,
            2,
        )
        .await;
    assert_eq!(late.status, 404, "{}", late.json);
    assert!(files_under(&dir.path().join("spool")).is_empty());
}

/// Spool bytes that no row owns (a stop between a delete's commit and its removal) are removed
/// on the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_sweeps_orphaned_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path()));
    let api = Api::new(&server);
    let alice = user("alice", "acme");
    let keep = data(100_000, 8);
    let up = api
        .classic(
            "acme",
            &alice,
            "keep.bin",
            "application/octet-stream",
            keep.clone(),
        )
        .await;
    let id = up.json["resource"]["id"].as_str().unwrap().to_string();
    server.stop();
    let orphan = dir
        .path()
        .join("spool")
        .join("0123456789abcdef0123456789abcdef");
    std::fs::create_dir(&orphan).unwrap();
    std::fs::write(orphan.join("1.0000000000000001"), b"litter").unwrap();
    let server = TestServer::start_with(config(dir.path()));
    assert!(!orphan.exists());
    let api = Api::new(&server);
    let dl = api
        .get(&format!("{API}/acme/files/{id}/download"), Some(&alice))
        .await;
    assert_eq!(sha(&dl.bytes), sha(&keep));
}

/// Unknown files and routes: 404 with a JSON body, never 500; wrong methods: 405 with Allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_files_and_methods() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path()));
    let api = Api::new(&server);
    let alice = user("alice", "acme");
    for path in [
        format!("{API}/acme/files/nope"),
        format!("{API}/acme/files/nope/download"),
        format!("{API}/acme/files/nope/thumbnails/0"),
        format!("{API}/acme/files/nope/thumbnails/x"),
        format!("{API}/acme/other"),
    ] {
        let a = api.get(&path, Some(&alice)).await;
        assert_eq!(a.status, 404, "{path}: {}", a.json);
        assert_eq!(a.json["error"], "not_found", "{path}");
    }
    let a = api
        .call(api.req(Method::PATCH, &format!("{API}/acme/files/x"), Some(&alice)))
        .await;
    assert_eq!(a.status, 405);
    assert!(a.headers["allow"].to_str().unwrap().contains("DELETE"));
    // A creation body that is not JSON.
    let a = api
        .call(
            api.req(
                Method::POST,
                &format!("{API}/acme/files?filename=a"),
                Some(&alice),
            )
            .body("{not json"),
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.json);
    // A chunk whose size contradicts the creation call.
    let init = api
        .create("acme", &alice, "filename=a.bin&total_size=10")
        .await;
    let id = init.json["resource"]["id"].as_str().unwrap().to_string();
    let a = api
        .chunk("acme", &id, &alice, &data(20, 9), "a.bin", 20, 1)
        .await;
    assert_eq!(a.status, 400, "{}", a.json);
    assert_eq!(a.json["error"], "identifier_conflict");
}

/// Downloads need a token or a signed link, unless `--public-downloads`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_access() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path()));
    let api = Api::new(&server);
    let alice = user("alice", "acme");
    let file = data(50_000, 10);
    let up = api
        .classic(
            "acme",
            &alice,
            "a.bin",
            "application/octet-stream",
            file.clone(),
        )
        .await;
    let id = up.json["resource"]["id"].as_str().unwrap().to_string();
    let path = format!("{API}/acme/files/{id}/download");
    assert_eq!(api.get(&path, None).await.status, 401);
    // A token in the query, for links.
    let a = api.get(&format!("{path}?token={alice}"), None).await;
    assert_eq!(a.status, 200);
    assert_eq!(sha(&a.bytes), sha(&file));
    server.stop();

    let mut c = config(dir.path());
    c.auth.public_downloads = true;
    let server = TestServer::start_with(c);
    let api = Api::new(&server);
    let a = api.get(&path, None).await;
    assert_eq!(a.status, 200);
    assert_eq!(sha(&a.bytes), sha(&file));
    // Public downloads do not open the metadata.
    assert_eq!(
        api.get(&format!("{API}/acme/files/{id}"), None)
            .await
            .status,
        401
    );
}

/// `--require-auth` on the chunk endpoint: every call needs a token, and identifiers are
/// scoped to the principal, so two users' same-named files never collide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_auth_on_the_chunk_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.auth.require_auth = true;
    let server = TestServer::start_with(c);
    let client_for = |token: &str| common::Client::with_token(&server, token);
    let anon = common::Client::new(&server);
    let alice = client_for(&user("alice", "acme"));
    let bob = client_for(&user("bob", "acme"));
    let a_file = common::Upload::new("same-id", data(30_000, 11), 10_000);
    let b_file = common::Upload::new("same-id", data(30_000, 12), 10_000);

    assert_eq!(anon.send(&a_file, 1, common::Via::Octet).await.status, 401);
    assert_eq!(anon.probe(&a_file, 1).await.status, 401);
    assert_eq!(anon.status("same-id").await.status, 401);

    let last = alice
        .upload_in_order(&a_file, &[1, 2, 3], common::Via::Octet)
        .await;
    let a_id = last.file_id();
    let url = last.json["download_url"].as_str().unwrap().to_string();
    assert!(url.contains("sig="), "{url}");
    // Bob's identical identifier is his own upload: his probe finds nothing of alice's.
    assert_eq!(bob.probe(&b_file, 1).await.status, 204);
    let last = bob
        .upload_in_order(&b_file, &[1, 2, 3], common::Via::Octet)
        .await;
    let b_id = last.file_id();
    assert_ne!(a_id, b_id);

    assert_eq!(sha(&alice.download(&a_id).await), sha(&a_file.data));
    assert_eq!(sha(&bob.download(&b_id).await), sha(&b_file.data));
    // Bob cannot read alice's file, nor can anyone without a token.
    assert_eq!(bob.get(&format!("/files/{a_id}")).await.status, 404);
    assert_eq!(anon.get(&format!("/files/{a_id}")).await.status, 401);
    // The signed link from the reply works alone, and only for that file.
    let got = anon.get(&url).await;
    assert_eq!(got.status, 200);
    assert_eq!(anon.get(&url.replace(&a_id, &b_id)).await.status, 401);
}

/// `--require-auth` on the chunk endpoint's thumbnails: the status call needs a token and
/// lists a signed URL that works alone, from an `<img src>`; without it or with another user's
/// token the thumbnail stays private, exactly like the download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_auth_on_chunk_endpoint_thumbnails() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.auth.require_auth = true;
    let server = TestServer::start_with(c);
    let token = user("alice", "acme");
    let alice = common::Client::with_token(&server, &token);
    let anon = common::Client::new(&server);
    let api = Api::new(&server);
    let bob = user("bob", "acme");

    let mut image = common::Upload::new("pic", png(300, 200), 1 << 20);
    image.filename = "pic.png".into();
    image.mime = "image/png".into();
    let last = alice.send(&image, 1, common::Via::Octet).await;
    assert_eq!(last.json["complete"], true, "{:?}", last.json);
    let id = last.file_id();
    assert_eq!(anon.status("pic").await.status, 401);
    let st = alice.status_previewed("pic").await.json;
    assert_eq!(st["thumbnails_status"], "done", "{st}");
    let url = st["thumbnails"][0]["url"].as_str().unwrap().to_string();
    let plain = format!("/files/{id}/thumbnails/0");
    assert!(url.starts_with(&format!("{plain}?scope=")), "{url}");
    assert!(url.contains("&sig="), "{url}");

    // The signed URL alone opens it; the plain one needs the owner's token.
    let got = api.get(&url, None).await;
    assert_eq!(got.status, 200);
    assert_eq!(&got.bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(api.get(&plain, None).await.status, 401);
    assert_eq!(api.get(&plain, Some(&token)).await.status, 200);
    assert_eq!(
        api.get(&format!("{plain}?token={token}"), None)
            .await
            .status,
        200
    );
    // Another user's token finds nothing; a signature moved to another path is refused.
    assert_eq!(api.get(&plain, Some(&bob)).await.status, 404);
    let other = common::Upload::new("other", data(1000, 5), 1 << 20);
    let other_id = alice.send(&other, 1, common::Via::Octet).await.file_id();
    let moved = url.replace(&id, &other_id);
    assert_eq!(api.get(&moved, None).await.status, 401);
    assert_eq!(
        api.get(&format!("{plain}?sig=forged"), None).await.status,
        401
    );
}

/// `chunkd token` mints a token the server (same data directory) accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_command_mints_accepted_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_chunkd");
    let out = std::process::Command::new(bin)
        .args([
            "token",
            "--sub",
            "ops",
            "--company",
            "acme",
            "--company",
            "beta",
            "--ttl",
            "10m",
        ])
        .arg("--data")
        .arg(dir.path())
        .env_remove("CHUNKD_JWT_SECRET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(token.split('.').count(), 3);
    // The secret file it created is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("jwt.secret"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");

    let server = TestServer::start_with(Config::for_data_dir(dir.path()));
    let api = Api::new(&server);
    assert_eq!(api.create("acme", &token, "filename=a").await.status, 200);
    assert_eq!(api.create("beta", &token, "filename=a").await.status, 200);
    assert_eq!(api.create("gamma", &token, "filename=a").await.status, 403);
}
