//! The Twake Files REST API v1, under `/internal/services/files/v1/companies/{company}/files`.
//!
//! Every route checks the caller's token against the company in the path
//! ([`access::member`]), and every index query is made in that company's scope, so a file id of
//! another company is simply not found. Chunks go through the same flow as the chunk endpoint
//! ([`upload::store_chunk`]) with [`Target::File`]: same geometry checks, same exactly-once
//! completion. What the Node server got wrong, and chunkd does not (see PROTOCOL.md): it
//! completes files, keeps the creation query's name, type and sizes, checks membership,
//! protects downloads, reports preview failures, serves Range and answers 404 for unknown
//! files.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use crate::access::{self, company_scope};
use crate::app::App;
use crate::auth::Principal;
use crate::body::{Body, RequestBody, json_response};
use crate::crypto::{self, FileKeys};
use crate::download;
use crate::error::{Error, Result};
use crate::geometry::Shape;
use crate::previews;
use crate::protocol::{MAX_FILENAME, MAX_TYPE, Params, clean_text, names};
use crate::store::{FileMeta, NewFile, ThumbRow};
use crate::upload::{self, ChunkBody, Target, new_id};

/// Where the API lives.
pub const PREFIX: &str = "/internal/services/files/v1/companies/";
/// A single-request upload is cut into chunks of this size, so that ranges and verification
/// work on bounded pieces, as for chunked uploads.
const CLASSIC_CHUNK: u64 = 8 << 20;
/// How long `thumbnail_sync=1` waits for the preview.
const THUMBNAIL_WAIT: Duration = Duration::from_secs(10);
/// Largest body accepted by the creation call (the front end sends `{}`).
const MAX_CREATE_BODY: usize = 64 * 1024;
/// Longest company or file id accepted in a path.
const MAX_ID: usize = 256;

/// The resource of one file, exactly as the Twake documentation shapes it.
#[derive(Debug, Serialize)]
pub struct Resource {
    company_id: String,
    id: String,
    application_id: Option<String>,
    user_id: Option<String>,
    created_at: i64,
    updated_at: i64,
    metadata: Metadata,
    thumbnails: Vec<previews::Listed>,
    upload_data: UploadData,
    /// Always empty: the key never leaves the server.
    encryption_key: &'static str,
}

#[derive(Debug, Serialize)]
struct Metadata {
    name: String,
    mime: String,
    thumbnails_status: String,
}

#[derive(Debug, Serialize)]
struct UploadData {
    size: u64,
    chunks: u64,
}

#[derive(Serialize)]
struct Wrapped<T> {
    resource: T,
}

/// The path's parts after [`PREFIX`].
enum Route<'a> {
    Files,
    File(&'a str),
    Download(&'a str),
    Thumbnail(&'a str, &'a str),
}

fn parse_route(rest: &str) -> Option<(&str, Route<'_>)> {
    let parts: Vec<&str> = rest.split('/').collect();
    let route = match parts.as_slice() {
        [_, "files"] => Route::Files,
        [_, "files", id] => Route::File(id),
        [_, "files", id, "download"] => Route::Download(id),
        [_, "files", id, "thumbnails", idx] => Route::Thumbnail(id, idx),
        _ => return None,
    };
    Some((parts[0], route))
}

/// A company or file id from the path: decoded, non-empty, bounded, printable.
fn path_id(name: &'static str, raw: &str) -> Result<String> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| Error::invalid(name, "not valid UTF-8"))?;
    if decoded.is_empty() || decoded.contains('/') {
        return Err(Error::NotFound("file"));
    }
    clean_text(name, &decoded, MAX_ID)
}

/// Routes a request under [`PREFIX`]; `rest` is the path after it.
pub async fn handle(
    app: &Arc<App>,
    req: Request<RequestBody>,
    rest: &str,
) -> Result<Response<Body>> {
    let Some((company, route)) = parse_route(rest) else {
        return Err(Error::NotFound("route"));
    };
    let company = path_id("company_id", company)?;
    let method = req.method().clone();
    match route {
        Route::Files => match method {
            Method::POST => create_or_upload(app, req, &company).await,
            _ => Err(Error::MethodNotAllowed {
                allow: "POST, OPTIONS",
            }),
        },
        Route::File(id) => {
            let id = path_id("file_id", id)?;
            match method {
                Method::GET | Method::HEAD => metadata(app, req, &company, id).await,
                Method::POST | Method::PUT => chunk(app, req, &company, id).await,
                Method::DELETE => delete(app, req, &company, id).await,
                _ => Err(Error::MethodNotAllowed {
                    allow: "GET, HEAD, POST, PUT, DELETE, OPTIONS",
                }),
            }
        }
        Route::Download(id) => {
            let id = path_id("file_id", id)?;
            match method {
                Method::GET | Method::HEAD => {
                    let scope = readable_scope(app, &req, &company, &id)?;
                    download::serve_file(app, req, scope, id).await
                }
                _ => Err(Error::MethodNotAllowed {
                    allow: "GET, HEAD, OPTIONS",
                }),
            }
        }
        Route::Thumbnail(id, idx) => {
            let id = path_id("file_id", id)?;
            let idx: u32 = idx.parse().map_err(|_| Error::NotFound("thumbnail"))?;
            match method {
                Method::GET | Method::HEAD => thumbnail(app, req, &company, id, idx).await,
                _ => Err(Error::MethodNotAllowed {
                    allow: "GET, HEAD, OPTIONS",
                }),
            }
        }
    }
}

/// Who may read a download or a thumbnail: anyone with `--public-downloads`; otherwise a
/// member's token (header or `?token=`), or a valid signed link.
fn readable_scope(
    app: &App,
    req: &Request<RequestBody>,
    company: &str,
    file_id: &str,
) -> Result<String> {
    let scope = company_scope(company);
    if app.config.auth.public_downloads {
        return Ok(scope);
    }
    let query = Params::from_query(req.uri().query())?;
    if !access::signed(app, &query, &scope, file_id)? {
        access::member(app, req.headers(), Some(&query), company)?;
    }
    Ok(scope)
}

/// Builds a file's resource. Thumbnail URLs carry a signature unless downloads are public.
fn resource(app: &App, company: &str, meta: FileMeta) -> Resource {
    let thumbnails = meta
        .thumbnails
        .iter()
        .map(|t: &ThumbRow| {
            let mut url = format!("{PREFIX}{company}/files/{}/thumbnails/{}", meta.id, t.idx);
            if !app.config.auth.public_downloads {
                url.push('?');
                url.push_str(&access::signed_query(app, &meta.scope, &meta.id));
            }
            previews::Listed::new(t, url)
        })
        .collect();
    Resource {
        company_id: company.to_string(),
        id: meta.id,
        application_id: meta.application_id,
        user_id: meta.user_id,
        created_at: meta.created_at,
        updated_at: meta.updated_at,
        metadata: Metadata {
            name: meta.name,
            mime: meta.mime,
            thumbnails_status: meta.thumbs,
        },
        thumbnails,
        upload_data: UploadData {
            size: meta.size.unwrap_or(0),
            chunks: meta.chunks.unwrap_or(1),
        },
        encryption_key: "",
    }
}

/// Answers `{"resource": …}` for a file of `company`, or 404.
async fn reply_resource(app: &Arc<App>, company: &str, file_id: String) -> Result<Response<Body>> {
    let scope = company_scope(company);
    let meta = app
        .blocking(move |app| app.index.file_meta(&scope, &file_id))
        .await?
        .ok_or(Error::NotFound("file"))?;
    let resource = resource(app, company, meta);
    Ok(json_response(StatusCode::OK, &Wrapped { resource }))
}

fn new_file(p: &Principal, company: &str, params: &Params<'_>) -> Result<NewFile> {
    Ok(NewFile {
        id: new_id(),
        scope: company_scope(company),
        name: params
            .text(names::FILENAME, MAX_FILENAME)?
            .unwrap_or_default(),
        mime: params.text(names::TYPE, MAX_TYPE)?.unwrap_or_default(),
        user_id: (!p.is_application()).then(|| p.sub.clone()),
        application_id: p.application_id.clone(),
        declared_size: params.number(names::TOTAL_SIZE)?,
        declared_chunks: params.number(names::TOTAL_CHUNKS)?,
        owner: p.scope(),
    })
}

fn wants_thumbnail(params: &Params<'_>) -> Result<bool> {
    Ok(matches!(
        params.get(&["thumbnail_sync"])?,
        Some("1" | "true")
    ))
}

/// `POST …/files`: with a multipart body, the whole file in one request; otherwise (no body,
/// or `{}` as the Twake front end sends) a file to be uploaded in chunks.
async fn create_or_upload(
    app: &Arc<App>,
    req: Request<RequestBody>,
    company: &str,
) -> Result<Response<Body>> {
    let p = access::member(app, req.headers(), None, company)?;
    if upload::is_multipart(req.headers()) {
        return classic(app, req, &p, company).await;
    }
    let params = Params::from_query(req.uri().query())?;
    let file = new_file(&p, company, &params)?;
    if let Some(size) = file.declared_size
        && size > app.config.limits.max_file_size
    {
        return Err(Error::FileTooLarge {
            size,
            limit: app.config.limits.max_file_size,
        });
    }
    read_small_json(req.into_body()).await?;
    let id = file.id.clone();
    app.blocking(move |app| {
        app.index
            .create_file(&file, app.config.limits.max_open_uploads)
    })
    .await?;
    reply_resource(app, company, id).await
}

/// Reads the creation call's body: empty or a JSON value, and small.
async fn read_small_json(body: RequestBody) -> Result<()> {
    let limited = http_body_util::Limited::new(body, MAX_CREATE_BODY);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Error::BodyTooLarge(MAX_CREATE_BODY as u64)
            } else {
                Error::from_boxed_body(&*e)
            }
        })?
        .to_bytes();
    if !bytes.iter().all(u8::is_ascii_whitespace) {
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .map_err(|e| Error::invalid("body", format!("not JSON: {e}")))?;
    }
    Ok(())
}

/// The single-request upload: the first file part, whatever its field name, streamed through
/// the cipher into the spool in pieces of [`CLASSIC_CHUNK`], then recorded complete in one
/// transaction.
async fn classic(
    app: &Arc<App>,
    req: Request<RequestBody>,
    p: &Principal,
    company: &str,
) -> Result<Response<Body>> {
    let (parts, body) = req.into_parts();
    let mut params = Params::from_query(parts.uri.query())?;
    let limit = app.config.limits.max_file_size;
    let mut source = ChunkBody::open(&parts.headers, body, limit, &mut params).await?;
    let result = store_classic(app, p, company, &params, &mut source).await;
    if result.is_err() {
        source.discard().await;
    }
    let (file_id, upload_id) = result?;
    previews::queue(app, upload_id.clone());
    if wants_thumbnail(&params)? {
        previews::wait(app, &upload_id, THUMBNAIL_WAIT).await;
    }
    reply_resource(app, company, file_id).await
}

async fn store_classic(
    app: &Arc<App>,
    p: &Principal,
    company: &str,
    params: &Params<'_>,
    source: &mut ChunkBody,
) -> Result<(String, String)> {
    let mut file = new_file(p, company, params)?;
    if file.name.is_empty() {
        let name = source.part_name.clone().unwrap_or_default();
        file.name = clean_text("filename", &name, MAX_FILENAME)?;
    }
    if file.mime.is_empty() {
        let mime = source.part_type.clone().unwrap_or_default();
        file.mime = clean_text("type", &mime, MAX_TYPE)?;
    }
    let limit = app.config.limits.max_file_size;
    let upload_id = new_id();
    let keys = FileKeys::generate();
    let wrapped = app.key.wrap(&keys);
    let cipher = Arc::new(app.file_cipher(&wrapped)?);
    let mut written = Vec::new();
    let mut reserved = Vec::new();
    let mut total = 0u64;
    for number in 1.. {
        reserved.push(app.usage.reserve(crypto::sealed_len(CLASSIC_CHUNK))?);
        let (w, more) = upload::write_chunk(
            app,
            &upload_id,
            cipher.clone(),
            number,
            source,
            CLASSIC_CHUNK,
            true,
        )
        .await?;
        total += w.len;
        if total > limit {
            return Err(Error::FileTooLarge { size: total, limit });
        }
        written.push(app.blocking(move |_| Ok(w.seal_rest()?)).await?);
        if !more {
            break;
        }
    }
    if let Some(declared) = file.declared_size
        && declared != total
    {
        return Err(Error::Geometry(format!(
            "total_size says {declared} bytes but the file part holds {total}"
        )));
    }
    let shape = Shape {
        total_size: total,
        chunk_size: Some(CLASSIC_CHUNK),
        total_chunks: Some(written.len() as u64),
    };
    file.declared_size = Some(total);
    file.declared_chunks = Some(written.len() as u64);
    let file_id = file.id.clone();
    let id = upload_id.clone();
    app.blocking(move |app| {
        let mut rows = Vec::with_capacity(written.len());
        let mut guards = Vec::with_capacity(written.len());
        for w in written {
            app.spool.finish_region(&w.file)?;
            rows.push(w.row);
            guards.push(w.guard);
        }
        app.index
            .insert_complete(&file, &id, &wrapped, shape, &rows)?;
        guards.iter_mut().for_each(|g| g.keep());
        app.spool.written_out(&id);
        // Counted in before the reservations go, as a chunk's commit does.
        app.usage
            .add(rows.iter().map(|r| crypto::sealed_len(r.len)).sum());
        Ok(())
    })
    .await?;
    let m = &app.metrics;
    m.chunks_received.inc_by(shape.total_chunks.unwrap_or(0));
    m.bytes_received.inc_by(total);
    m.uploads_started.inc();
    m.uploads_completed.inc();
    tracing::info!(%file_id, size = total, "upload complete");
    Ok((file_id, upload_id))
}

/// `POST …/files/{id}`: one chunk, parameters in the query or the form, either naming.
async fn chunk(
    app: &Arc<App>,
    req: Request<RequestBody>,
    company: &str,
    file_id: String,
) -> Result<Response<Body>> {
    let p = access::member(app, req.headers(), None, company)?;
    let (parts, body) = req.into_parts();
    let mut params = Params::from_query(parts.uri.query())?;
    let mut source = ChunkBody::open_checked(app, &parts.headers, body, &mut params).await?;
    let target = Target::File {
        scope: company_scope(company),
        file_id: file_id.clone(),
        may_overwrite: p.is_application(),
    };
    let result = match params.chunk(Some(file_id.clone())) {
        Ok(chunk) => upload::store_chunk(app, target, chunk, &mut source).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        source.discard().await;
    }
    let stored = result?;
    if stored.completed_now && wants_thumbnail(&params)? {
        previews::wait(app, &stored.row.id, THUMBNAIL_WAIT).await;
    }
    reply_resource(app, company, file_id).await
}

/// `GET …/files/{id}`: the resource, complete or not.
async fn metadata(
    app: &Arc<App>,
    req: Request<RequestBody>,
    company: &str,
    file_id: String,
) -> Result<Response<Body>> {
    access::member(app, req.headers(), None, company)?;
    reply_resource(app, company, file_id).await
}

/// `DELETE …/files/{id}`: rows first, in one transaction, then the bytes. A stop in between
/// leaves only bytes no row owns, which the startup sweep removes.
async fn delete(
    app: &Arc<App>,
    req: Request<RequestBody>,
    company: &str,
    file_id: String,
) -> Result<Response<Body>> {
    access::member(app, req.headers(), None, company)?;
    let scope = company_scope(company);
    app.blocking(move |app| {
        let removed = app
            .index
            .delete_file(&scope, &file_id)?
            .ok_or(Error::NotFound("file"))?;
        app.release(&removed)?;
        tracing::info!(%file_id, "file deleted");
        Ok(())
    })
    .await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "status": "success" }),
    ))
}

/// `GET …/files/{id}/thumbnails/{index}`: the decrypted PNG.
async fn thumbnail(
    app: &Arc<App>,
    req: Request<RequestBody>,
    company: &str,
    file_id: String,
    idx: u32,
) -> Result<Response<Body>> {
    let scope = readable_scope(app, &req, company, &file_id)?;
    download::serve_thumbnail(app, req, scope, file_id, idx).await
}
