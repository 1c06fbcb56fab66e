//! `GET /files` (download) and `POST /files` (upload) (`docs/contract.md` §6.2).
//!
//! Both directions stream in constant memory: downloads read the file in 64 KiB chunks (gzip
//! on the fly when the client asks for it), uploads write each body chunk as it arrives
//! (gunzipped on the fly for `Content-Encoding: gzip`, split by `multer` for multipart bodies).

use crate::auth::{ct_eq, json_error};
use crate::entry;
use crate::filesystem::{ops, xattr};
use crate::paths;
use crate::state::AgentState;
use crate::users::{self, UserInfo};
use async_compression::tokio::bufread::{GzipDecoder, GzipEncoder};
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use sandboxd_protocol::filesystem::UploadedEntry;
use std::collections::{BTreeMap, HashSet};
use std::io;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncSeekExt, BufReader};
use tokio_util::io::{ReaderStream, StreamReader};

/// Chunk size of downloads.
const READ_CHUNK: usize = 512 * 1024;
/// Upload bytes collected before one `write(2)`.
const WRITE_BUFFER: usize = 1024 * 1024;
/// Longest metadata key.
pub const MAX_METADATA_KEY: usize = 246;
/// Largest total metadata size: sum of `len("user.e2b.") + len(key) + len(value)`.
pub const MAX_METADATA_TOTAL: usize = 4096;

/// An HTTP error of the `/files` endpoints: status and message, sent as
/// `{"code":<status>,"message":...}` with `application/json; charset=utf-8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesError {
    pub status: StatusCode,
    pub message: String,
}

impl FilesError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
    fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    fn into_response(self) -> Response {
        json_error(self.status, &self.message)
    }
}

fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// A failed file operation: a client mistake (bad path, no permission, read-only file system)
/// is a 4xx with the reason; only the rest is a 500.
fn io_failure(what: String, e: &io::Error) -> FilesError {
    if is_no_space(e) {
        return no_space();
    }
    let status = match e.raw_os_error() {
        Some(
            libc::ENOENT
            | libc::ENOTDIR
            | libc::EISDIR
            | libc::EINVAL
            | libc::ENAMETOOLONG
            | libc::ELOOP
            | libc::EEXIST
            | libc::EXDEV
            | libc::EBUSY
            | libc::ETXTBSY
            | libc::EOPNOTSUPP,
        ) => StatusCode::BAD_REQUEST,
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => StatusCode::FORBIDDEN,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    FilesError::new(status, format!("{what}: {e}"))
}

fn no_space() -> FilesError {
    FilesError::new(
        StatusCode::INSUFFICIENT_STORAGE,
        "not enough disk space available",
    )
}

/// The query parameters of `/files`. The first occurrence of a parameter wins.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FilesQuery {
    pub path: Option<String>,
    pub username: Option<String>,
    pub signature: Option<String>,
    pub signature_expiration: Option<String>,
}

/// Parse an `application/x-www-form-urlencoded` query string.
pub fn parse_query(raw: &str) -> FilesQuery {
    let mut q = FilesQuery::default();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            let plus = s.replace('+', " ");
            percent_encoding::percent_decode_str(&plus)
                .decode_utf8_lossy()
                .into_owned()
        };
        let slot = match decode(k).as_str() {
            "path" => &mut q.path,
            "username" => &mut q.username,
            "signature" => &mut q.signature,
            "signature_expiration" => &mut q.signature_expiration,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(decode(v));
        }
    }
    q
}

/// The signature of a `/files` URL: `v1_` + base64 (standard, no padding) of
/// `sha256("<path>:<op>:<username>:<token>[:<expiration>]")`. `op` is `read` or `write`;
/// `path` is the raw query value.
pub fn file_signature(path: &str, op: &str, username: &str, token: &str, expiration: Option<i64>) -> String {
    let exp = expiration.map(|e| e.to_string());
    sandboxd_protocol::signing::file_signature(path, op, username, token, exp.as_deref())
}

/// Step 1 of §2.4: the header token or the URL signature (only when a token is set).
pub fn check_access(
    token: Option<&str>,
    header_token: Option<&[u8]>,
    q: &FilesQuery,
    op: &str,
    now_unix: i64,
) -> Result<(), FilesError> {
    let Some(token) = token else { return Ok(()) };
    if let Some(given) = header_token {
        let given = std::str::from_utf8(given).unwrap_or("");
        return if ct_eq(given, token) {
            Ok(())
        } else {
            Err(FilesError::unauthorized(
                "access token present in header but does not match",
            ))
        };
    }
    let Some(signature) = q.signature.as_deref() else {
        return Err(FilesError::unauthorized("missing signature query parameter"));
    };
    let expiration = match q.signature_expiration.as_deref() {
        None => None,
        Some(s) => Some(
            s.trim()
                .parse::<i64>()
                .map_err(|_| FilesError::bad_request(format!("invalid signature_expiration: {s:?}")))?,
        ),
    };
    let expected = file_signature(
        q.path.as_deref().unwrap_or(""),
        op,
        q.username.as_deref().unwrap_or(""),
        token,
        expiration,
    );
    if !ct_eq(signature, &expected) {
        return Err(FilesError::unauthorized("invalid signature"));
    }
    if let Some(exp) = expiration
        && exp < now_unix
    {
        return Err(FilesError::unauthorized("signature is already expired"));
    }
    Ok(())
}

/// Validate `X-Metadata-*` headers: key = the rest of the header name, lower-cased (hyper
/// already lower-cases names); the first value of a repeated key wins.
pub fn parse_metadata(headers: &HeaderMap) -> Result<BTreeMap<String, String>, FilesError> {
    let invalid = |m: String| FilesError::bad_request(format!("invalid metadata: {m}"));
    let mut out = BTreeMap::new();
    let mut total = 0usize;
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix("x-metadata-") else {
            continue;
        };
        if out.contains_key(key) {
            continue;
        }
        if key.is_empty() {
            return Err(invalid("empty key".into()));
        }
        if key.len() > MAX_METADATA_KEY {
            return Err(invalid(format!(
                "key {key:?} is longer than {MAX_METADATA_KEY} bytes"
            )));
        }
        let printable = |b: &u8| (0x20..=0x7e).contains(b);
        if !key.as_bytes().iter().all(printable) {
            return Err(invalid(format!("key {key:?} must be printable ASCII")));
        }
        let v = value.as_bytes();
        if !v.iter().all(printable) {
            return Err(invalid(format!("value of {key:?} must be printable ASCII")));
        }
        total += xattr::PREFIX.len() + key.len() + v.len();
        if total > MAX_METADATA_TOTAL {
            return Err(invalid(format!("total size exceeds {MAX_METADATA_TOTAL} bytes")));
        }
        out.insert(key.to_string(), String::from_utf8_lossy(v).into_owned());
    }
    Ok(out)
}

/// Which encoding a download uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadEncoding {
    Identity,
    Gzip,
}

/// Choose the download encoding from `Accept-Encoding`. gzip is used when the client asks for
/// gzip alone (the SDK's `gzip=True` sends exactly `gzip`) or refuses identity; a general list
/// such as httpx's default `gzip, deflate` gets identity, which is far cheaper for large files
/// and which every client accepts. `None`: nothing acceptable (406).
pub fn choose_encoding(accept: Option<&str>) -> Option<DownloadEncoding> {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return Some(DownloadEncoding::Identity);
    };
    let mut gzip_q: Option<f32> = None;
    let mut identity_q: Option<f32> = None;
    let mut star_q: Option<f32> = None;
    let mut others = 0usize;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        if coding.is_empty() {
            continue;
        }
        let mut q = 1.0f32;
        for p in parts {
            if let Some(v) = p.trim().strip_prefix("q=") {
                q = v.trim().parse().unwrap_or(0.0);
            }
        }
        match coding.as_str() {
            "gzip" | "x-gzip" => gzip_q = Some(q),
            "identity" => identity_q = Some(q),
            "*" => star_q = Some(q),
            _ => {
                if q > 0.0 {
                    others += 1;
                }
            }
        }
    }
    let gzip_ok = gzip_q.or(star_q).is_some_and(|q| q > 0.0);
    let identity_ok = identity_q
        .or(star_q.filter(|q| *q <= 0.0))
        .is_none_or(|q| q > 0.0);
    if !identity_ok {
        return gzip_ok.then_some(DownloadEncoding::Gzip);
    }
    if gzip_q.is_some_and(|q| q > 0.0) && others == 0 {
        return Some(DownloadEncoding::Gzip);
    }
    Some(DownloadEncoding::Identity)
}

/// A single `Range: bytes=...` request against a file of `size` bytes. `Ok(None)`: serve the
/// whole file (no header, several ranges or a form we do not handle). `Err(())`: unsatisfiable.
#[allow(clippy::result_unit_err)]
pub fn parse_range(header: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 || size == 0 {
            return Err(());
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        if start >= size {
            return Err(());
        }
        let end = if b.is_empty() {
            size - 1
        } else {
            b.parse::<u64>().map_err(|_| ())?.min(size - 1)
        };
        if end < start {
            return Err(());
        }
        (start, end)
    };
    Ok(Some(range))
}

struct Request {
    user: UserInfo,
    query: FilesQuery,
}

/// Auth (step 1) and user (step 2) of both endpoints.
fn prepare(
    state: &AgentState,
    headers: &HeaderMap,
    raw_query: Option<&str>,
    op: &str,
) -> Result<Request, FilesError> {
    let query = parse_query(raw_query.unwrap_or(""));
    let cfg = state.config();
    check_access(
        cfg.access_token.as_deref(),
        headers.get("x-access-token").map(HeaderValue::as_bytes),
        &query,
        op,
        chrono::Utc::now().timestamp(),
    )?;
    let name = match query.username.as_deref().filter(|u| !u.is_empty()) {
        Some(u) => u.to_string(),
        None if !cfg.default_user.is_empty() => cfg.default_user.clone(),
        None => return Err(FilesError::bad_request("no user specified")),
    };
    let user = users::lookup(&name)
        .map_err(|e| FilesError::unauthorized(format!("error looking up user '{name}': {e}")))?;
    Ok(Request { user, query })
}

fn resolve(state: &AgentState, user: &UserInfo, raw: &str) -> Result<String, FilesError> {
    let cfg = state.config();
    paths::resolve(raw, user, cfg.default_workdir.as_deref())
        .map_err(|e| FilesError::bad_request(format!("invalid path '{raw}': {e}")))
}

/// `GET /files`.
pub async fn download(
    State(state): State<Arc<AgentState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    match download_inner(&state, raw.as_deref(), &headers).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn download_inner(
    state: &AgentState,
    raw: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, FilesError> {
    let req = prepare(state, headers, raw, "read")?;
    let path = resolve(state, &req.user, req.query.path.as_deref().unwrap_or(""))?;
    let md = match tokio::fs::metadata(&path).await {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => {
            return Err(FilesError::new(
                StatusCode::NOT_FOUND,
                format!("path '{path}' does not exist"),
            ));
        }
        Err(e) => return Err(io_failure(format!("error checking path '{path}'"), &e)),
    };
    if md.is_dir() {
        return Err(FilesError::bad_request(format!("path '{path}' is a directory")));
    }
    if !md.is_file() {
        return Err(FilesError::bad_request(format!(
            "path '{path}' is not a regular file"
        )));
    }
    let encoding = choose_encoding(headers.get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok()))
        .ok_or_else(|| {
            FilesError::new(
                StatusCode::NOT_ACCEPTABLE,
                "no acceptable encoding: only gzip and identity are supported",
            )
        })?;
    let mut file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .await
        .map_err(|e| io_failure(format!("error opening '{path}'"), &e))?;
    let name = entry::base_name(&path);
    let content_type = mime_guess::from_path(&path).first_or_octet_stream();
    let mut builder = Response::builder()
        .header(header::VARY, "Accept-Encoding")
        .header(
            header::CONTENT_DISPOSITION,
            format!(
                "inline; filename=\"{}\"",
                name.replace(['"', '\\', '\r', '\n'], "_")
            ),
        )
        .header(header::CONTENT_TYPE, content_type.as_ref());
    if let Some(t) = chrono::DateTime::from_timestamp(md.mtime(), 0) {
        builder = builder.header(
            header::LAST_MODIFIED,
            t.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
        );
    }
    let size = md.len();
    let resp = match encoding {
        DownloadEncoding::Gzip => {
            let enc = GzipEncoder::with_quality(
                BufReader::with_capacity(READ_CHUNK, file),
                async_compression::Level::Fastest,
            );
            builder
                .header(header::CONTENT_ENCODING, "gzip")
                .body(Body::from_stream(ReaderStream::with_capacity(enc, READ_CHUNK)))
        }
        DownloadEncoding::Identity => {
            let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
            builder = builder.header(header::ACCEPT_RANGES, "bytes");
            match parse_range(range, size) {
                Err(()) => builder
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                    .body(Body::empty()),
                Ok(Some((start, end))) => {
                    file.seek(io::SeekFrom::Start(start))
                        .await
                        .map_err(|e| FilesError::internal(format!("error reading '{path}': {e}")))?;
                    let len = end - start + 1;
                    builder
                        .status(StatusCode::PARTIAL_CONTENT)
                        .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"))
                        .header(header::CONTENT_LENGTH, len)
                        .body(Body::from_stream(ReaderStream::with_capacity(
                            file.take(len),
                            READ_CHUNK,
                        )))
                }
                Ok(None) => builder
                    .header(header::CONTENT_LENGTH, size)
                    .body(Body::from_stream(ReaderStream::with_capacity(
                        file.take(size),
                        READ_CHUNK,
                    ))),
            }
        }
    };
    resp.map_err(|e| FilesError::internal(format!("building response: {e}")))
}

type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// How long a failed upload keeps reading (and discarding) the rest of the request body before
/// it answers, so that a client still sending gets the error instead of a broken pipe.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Read the raw request body on its own task and hand the chunks over a small channel. When the
/// receiver is dropped (the upload failed), the task reads and discards the rest of the body.
fn pump_body(body: Body) -> (ByteStream, tokio::task::JoinHandle<()>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
    let task = tokio::spawn(async move {
        let mut frames = body.into_data_stream();
        let mut forward = true;
        while let Some(item) = frames.next().await {
            let item = item.map_err(|e| io::Error::other(format!("reading request body: {e}")));
            let failed = item.is_err();
            if forward && tx.send(item).await.is_err() {
                forward = false;
            }
            if failed {
                break;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) });
    (Box::pin(stream), task)
}

/// The request body as a stream of decoded bytes (gunzipped for `Content-Encoding: gzip`).
fn body_stream(headers: &HeaderMap, raw: ByteStream) -> Result<ByteStream, FilesError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("") | Some("identity") => Ok(raw),
        Some("gzip") | Some("x-gzip") => {
            let mut dec = GzipDecoder::new(StreamReader::new(raw));
            dec.multiple_members(true);
            Ok(Box::pin(ReaderStream::with_capacity(dec, READ_CHUNK)))
        }
        Some(other) => Err(FilesError::bad_request(format!(
            "unsupported Content-Encoding: {other}"
        ))),
    }
}

/// A stream that yields at most [`Throttled::MAX_STREAK`] ready items per poll. `multer` reads
/// its input until it is pending, so without this a fast client could make it buffer without
/// bound; with it, memory stays at a few chunks.
struct Throttled<S> {
    inner: S,
    streak: usize,
}

impl<S> Throttled<S> {
    const MAX_STREAK: usize = 4;
}

impl<S: Stream + Unpin> Stream for Throttled<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.streak >= Self::MAX_STREAK {
            self.streak = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let r = Pin::new(&mut self.inner).poll_next(cx);
        match &r {
            Poll::Ready(Some(_)) => self.streak += 1,
            _ => self.streak = 0,
        }
        r
    }
}

fn read_error(e: io::Error) -> FilesError {
    FilesError::bad_request(format!("error reading request body: {e}"))
}

/// `POST /files`.
pub async fn upload(
    State(state): State<Arc<AgentState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (stream, pump) = pump_body(body);
    let result = upload_inner(&state, raw.as_deref(), &headers, stream).await;
    if result.is_err() {
        // The body stream is gone: let the pump discard the rest, for a bounded time.
        let abort = pump.abort_handle();
        if tokio::time::timeout(DRAIN_LIMIT, pump).await.is_err() {
            abort.abort();
        }
    }
    match result {
        Ok(entries) => {
            let body = serde_json::to_vec(&entries).unwrap_or_else(|_| b"[]".to_vec());
            let mut r = Response::new(Body::from(body));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Err(e) => e.into_response(),
    }
}

async fn upload_inner(
    state: &Arc<AgentState>,
    raw: Option<&str>,
    headers: &HeaderMap,
    body: ByteStream,
) -> Result<Vec<UploadedEntry>, FilesError> {
    let req = prepare(state, headers, raw, "write")?;
    let metadata = parse_metadata(headers)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let mut upload = Upload {
        state: state.clone(),
        user: req.user,
        metadata,
        seen: HashSet::new(),
        entries: Vec::new(),
    };
    match mime.as_str() {
        "application/octet-stream" => {
            let Some(raw_path) = req.query.path.as_deref().filter(|p| !p.is_empty()) else {
                return Err(FilesError::bad_request(
                    "path query parameter is required for raw body upload",
                ));
            };
            let mut stream = body_stream(headers, body)?;
            let first = stream.next().await.transpose().map_err(read_error)?;
            upload.file(raw_path, first, &mut stream).await?;
        }
        "multipart/form-data" => {
            let boundary = multer::parse_boundary(&content_type)
                .map_err(|e| FilesError::bad_request(format!("invalid multipart content type: {e}")))?;
            let stream = body_stream(headers, body)?;
            let mut multipart = multer::Multipart::new(
                Throttled {
                    inner: stream,
                    streak: 0,
                },
                boundary,
            );
            loop {
                let field = match multipart.next_field().await {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return Err(FilesError::bad_request(format!("invalid multipart body: {e}"))),
                };
                if field.name() != Some("file") {
                    continue;
                }
                let raw_path = match req.query.path.as_deref().filter(|p| !p.is_empty()) {
                    Some(p) => p.to_string(),
                    None => match field.file_name() {
                        Some(f) if !f.is_empty() => f.to_string(),
                        _ => {
                            return Err(FilesError::bad_request(
                                "missing file path: no path query parameter and no filename in the part",
                            ));
                        }
                    },
                };
                let mut chunks = field.map_err(|e| io::Error::other(format!("invalid multipart body: {e}")));
                let first = chunks.next().await.transpose().map_err(read_error)?;
                upload.file(&raw_path, first, &mut chunks).await?;
            }
        }
        "" => return Err(FilesError::bad_request("missing Content-Type")),
        other => {
            return Err(FilesError::bad_request(format!(
                "unsupported content type: {other}"
            )));
        }
    }
    if upload.entries.is_empty() {
        return Err(FilesError::bad_request("no file in the request"));
    }
    Ok(upload.entries)
}

struct Upload {
    state: Arc<AgentState>,
    user: UserInfo,
    metadata: BTreeMap<String, String>,
    seen: HashSet<String>,
    entries: Vec<UploadedEntry>,
}

impl Upload {
    /// Write one file (§2.5 steps 1–6). `first` is the first body chunk, read before the file is
    /// touched, so that a broken body (for example a bad gzip header) leaves no file behind.
    async fn file<S>(&mut self, raw_path: &str, first: Option<Bytes>, rest: &mut S) -> Result<(), FilesError>
    where
        S: Stream<Item = io::Result<Bytes>> + Unpin,
    {
        let path = resolve(&self.state, &self.user, raw_path)?;
        if !self.seen.insert(path.clone()) {
            return Err(FilesError::bad_request(format!(
                "path '{path}' appears more than once in the request"
            )));
        }
        let (uid, gid) = (self.user.uid, self.user.gid);
        let st = self.state.clone();
        let p = path.clone();
        let file = blocking(move || open_for_upload(&st, &p, uid, gid)).await?;
        let mut buf = BytesMut::with_capacity(WRITE_BUFFER);
        let first_was_none = first.is_none();
        if let Some(first) = first {
            buf.extend_from_slice(&first);
        }
        // One write in flight while the next buffer fills: receiving and writing overlap, and
        // memory stays bounded by two buffers.
        let mut in_flight: Option<tokio::task::JoinHandle<Result<std::fs::File, FilesError>>> = None;
        let mut idle = Some(file);
        // No first chunk: the body already ended, and a finished stream must not be polled again.
        let mut ended = first_was_none;
        while !ended {
            if buf.len() >= WRITE_BUFFER {
                let f = match (idle.take(), in_flight.take()) {
                    (Some(f), _) => f,
                    (None, Some(h)) => join_write(h).await?,
                    (None, None) => return Err(FilesError::internal("upload lost its file")),
                };
                in_flight = Some(tokio::spawn(write_chunk(f, buf.split().freeze())));
            }
            match rest.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    if let Some(h) = in_flight {
                        let _ = h.await;
                    }
                    return Err(read_error(e));
                }
                None => ended = true,
            }
        }
        let mut file = match (idle, in_flight) {
            (Some(f), _) => f,
            (None, Some(h)) => join_write(h).await?,
            (None, None) => return Err(FilesError::internal("upload lost its file")),
        };
        if !buf.is_empty() {
            file = write_chunk(file, buf.freeze()).await?;
        }
        let meta = self.metadata.clone();
        let written = blocking(move || {
            xattr::replace_metadata_fd(file.as_fd(), &meta)
                .map_err(|e| io_failure("error setting metadata".into(), &e))?;
            Ok(xattr::read_metadata_fd(file.as_fd()))
        })
        .await?;
        self.entries.push(UploadedEntry {
            name: entry::base_name(&path),
            path,
            entry_type: "file".into(),
            metadata: written,
        });
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FilesError> + Send + 'static,
) -> Result<T, FilesError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FilesError::internal(format!("file operation failed: {e}")))?
}

async fn join_write(
    h: tokio::task::JoinHandle<Result<std::fs::File, FilesError>>,
) -> Result<std::fs::File, FilesError> {
    h.await
        .map_err(|e| FilesError::internal(format!("file operation failed: {e}")))?
}

async fn write_chunk(mut file: std::fs::File, data: Bytes) -> Result<std::fs::File, FilesError> {
    blocking(move || {
        file.write_all(&data)
            .map_err(|e| io_failure("error writing file".into(), &e))?;
        Ok(file)
    })
    .await
}

/// Steps 1–3 of §2.5: parents (0755, chowned, one level at a time), then open. A new file is
/// created 0644 and then chowned (CREATE, CHMOD); an existing file is chowned, then truncated.
fn open_for_upload(state: &AgentState, path: &str, uid: u32, gid: u32) -> Result<std::fs::File, FilesError> {
    let p = std::path::Path::new(path);
    if let Some(parent) = p.parent() {
        ops::make_dirs(parent, uid, gid)
            .map_err(|e| io_failure(format!("error creating parent directories of '{path}'"), &e))?;
        // Recursive watches must cover new parents before the file appears in them.
        state.watchers.sync();
    }
    let open_err = |e: io::Error| {
        if e.raw_os_error() == Some(libc::EISDIR) {
            FilesError::bad_request(format!("path is a directory: {path}"))
        } else {
            io_failure(format!("error opening file '{path}'"), &e)
        }
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(p)
    {
        Ok(f) => {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                .map_err(|e| io_failure(format!("error changing owner of '{path}'"), &e))?;
            Ok(f)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let md = match std::fs::metadata(p) {
                Ok(md) => md,
                // A dangling symlink: write its target, as envd does.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o644)
                        .custom_flags(libc::O_CLOEXEC)
                        .open(p)
                        .map_err(open_err)?;
                    std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                        .map_err(|e| io_failure(format!("error changing owner of '{path}'"), &e))?;
                    return Ok(f);
                }
                Err(e) => return Err(open_err(e)),
            };
            if md.is_dir() {
                return Err(FilesError::bad_request(format!("path is a directory: {path}")));
            }
            if !md.is_file() {
                return Err(FilesError::bad_request(format!(
                    "path is not a regular file: {path}"
                )));
            }
            std::os::unix::fs::chown(p, Some(uid), Some(gid))
                .map_err(|e| io_failure(format!("error changing owner of '{path}'"), &e))?;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .custom_flags(libc::O_CLOEXEC)
                .open(p)
                .map_err(open_err)
        }
        Err(e) => Err(open_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = parse_query("path=%2Fhome%2Fuser%2Fa+b.txt&username=user&path=second&x=1&signature=v1_abc");
        assert_eq!(q.path.as_deref(), Some("/home/user/a b.txt"));
        assert_eq!(q.username.as_deref(), Some("user"));
        assert_eq!(q.signature.as_deref(), Some("v1_abc"));
        assert_eq!(q.signature_expiration, None);
        assert_eq!(parse_query(""), FilesQuery::default());
        assert_eq!(parse_query("path").path.as_deref(), Some(""));
    }

    #[test]
    fn access_checks() {
        let q = |sig: Option<String>, exp: Option<&str>| FilesQuery {
            path: Some("a.txt".into()),
            username: None,
            signature: sig,
            signature_expiration: exp.map(str::to_string),
        };
        let none = q(None, None);
        assert!(check_access(None, None, &none, "read", 0).is_ok());
        assert!(check_access(Some("tok"), Some(b"tok"), &none, "read", 0).is_ok());
        let e = check_access(Some("tok"), Some(b"bad"), &none, "read", 0).unwrap_err();
        assert_eq!(e.message, "access token present in header but does not match");
        let e = check_access(Some("tok"), None, &none, "read", 0).unwrap_err();
        assert_eq!(
            (e.status, e.message.as_str()),
            (StatusCode::UNAUTHORIZED, "missing signature query parameter")
        );
        let good = file_signature("a.txt", "read", "", "tok", None);
        assert!(check_access(Some("tok"), None, &q(Some(good.clone()), None), "read", 0).is_ok());
        let e = check_access(Some("tok"), None, &q(Some(good), None), "write", 0).unwrap_err();
        assert_eq!(e.message, "invalid signature");
        let exp = file_signature("a.txt", "read", "", "tok", Some(1000));
        assert!(
            check_access(
                Some("tok"),
                None,
                &q(Some(exp.clone()), Some("1000")),
                "read",
                999
            )
            .is_ok()
        );
        let e = check_access(
            Some("tok"),
            None,
            &q(Some(exp.clone()), Some("1000")),
            "read",
            1001,
        )
        .unwrap_err();
        assert_eq!(e.message, "signature is already expired");
        // The expiration is part of the signature: changing it invalidates the URL.
        let e = check_access(Some("tok"), None, &q(Some(exp), Some("2000")), "read", 0).unwrap_err();
        assert_eq!(e.message, "invalid signature");
        let e = check_access(Some("tok"), None, &q(Some("x".into()), Some("soon")), "read", 0).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn metadata_rules() {
        let mut h = HeaderMap::new();
        h.insert("x-metadata-Author", HeaderValue::from_static("me"));
        h.append("x-metadata-author", HeaderValue::from_static("second"));
        h.insert("x-metadata-k", HeaderValue::from_static("v w"));
        h.insert("content-type", HeaderValue::from_static("x"));
        let m = parse_metadata(&h).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m["author"], "me");
        assert_eq!(m["k"], "v w");

        let mut h = HeaderMap::new();
        h.insert("x-metadata-k", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
        assert!(
            parse_metadata(&h)
                .unwrap_err()
                .message
                .starts_with("invalid metadata:")
        );
        let mut h = HeaderMap::new();
        let long = format!("x-metadata-{}", "a".repeat(247));
        h.insert(
            axum::http::HeaderName::from_bytes(long.as_bytes()).unwrap(),
            HeaderValue::from_static("v"),
        );
        assert!(parse_metadata(&h).is_err());
        let mut h = HeaderMap::new();
        let ok = format!("x-metadata-{}", "a".repeat(246));
        h.insert(
            axum::http::HeaderName::from_bytes(ok.as_bytes()).unwrap(),
            HeaderValue::from_static("v"),
        );
        assert!(parse_metadata(&h).is_ok());
        let mut h = HeaderMap::new();
        for i in 0..4 {
            let name = format!("x-metadata-k{i}");
            h.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(&"v".repeat(1012)).unwrap(),
            );
        }
        // 4 × (9 + 2 + 1012) = 4092 fits; a fifth key (12 more) does not.
        assert!(parse_metadata(&h).is_ok());
        h.insert("x-metadata-k4", HeaderValue::from_static("v"));
        assert!(parse_metadata(&h).is_err());
        let mut h = HeaderMap::new();
        h.insert("x-metadata-", HeaderValue::from_static("v"));
        assert!(parse_metadata(&h).is_err());
    }

    #[test]
    fn encoding_choice() {
        use DownloadEncoding::*;
        assert_eq!(choose_encoding(None), Some(Identity));
        assert_eq!(choose_encoding(Some("gzip")), Some(Gzip));
        assert_eq!(choose_encoding(Some("gzip, deflate")), Some(Identity));
        assert_eq!(choose_encoding(Some("identity")), Some(Identity));
        assert_eq!(choose_encoding(Some("gzip;q=0")), Some(Identity));
        assert_eq!(choose_encoding(Some("identity;q=0, gzip")), Some(Gzip));
        assert_eq!(choose_encoding(Some("br, identity;q=0")), None);
        assert_eq!(choose_encoding(Some("*;q=0")), None);
        assert_eq!(choose_encoding(Some("*")), Some(Identity));
        assert_eq!(choose_encoding(Some("deflate, *;q=0, gzip")), Some(Gzip));
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-3"), 10), Ok(Some((0, 3))));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Ok(Some((5, 9))));
        assert_eq!(parse_range(Some("bytes=-4"), 10), Ok(Some((6, 9))));
        assert_eq!(parse_range(Some("bytes=2-100"), 10), Ok(Some((2, 9))));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Ok(None));
        assert_eq!(parse_range(Some("items=0-1"), 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=x-1"), 10), Err(()));
    }
}
