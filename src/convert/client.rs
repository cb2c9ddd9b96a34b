//! A small OCI distribution client for `rafs-image convert`: manifests, streamed blob
//! downloads, HEAD checks, and resumable chunked uploads (POST, PATCH…, PUT ?digest).
//! Authentication answers the registry's challenge with the storage backend's code
//! ([`crate::storage::registry::plan_auth`]).

use std::io::{Read, Seek, SeekFrom};
use std::sync::Mutex;
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::{StatusCode, Url};

use super::ConvertError;
use crate::storage::registry::{bearer_from_token_response, plan_auth, AuthPlan};

/// Media types a manifest GET accepts.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// One repository on one registry.
pub struct RegistryClient {
    http: Client,
    base: Url,
    repo: String,
    /// base64 `user:pass`.
    creds: Option<String>,
    auth_header: Mutex<Option<String>>,
    /// Retries after the first attempt of each request.
    pub retries: u32,
    /// Bytes per PATCH of an upload.
    pub chunk_size: usize,
}

/// What an upload did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadStats {
    /// PATCH requests that succeeded.
    pub patches: u32,
    /// Times an upload resumed after a failure (from the registry's `Range`).
    pub resumes: u32,
}

fn http_err(what: &str, e: reqwest::Error) -> ConvertError {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    ConvertError::Registry(format!("{what}: {msg}"))
}

impl RegistryClient {
    /// A client for `host/repo`, over http when `insecure`.
    pub fn new(
        host: &str,
        repo: &str,
        insecure: bool,
        creds: Option<String>,
    ) -> Result<RegistryClient, ConvertError> {
        let scheme = if insecure { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{host}/"))
            .map_err(|e| ConvertError::Invalid(format!("registry {host:?}: {e}")))?;
        let http = Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| http_err("http client", e))?;
        Ok(RegistryClient {
            http,
            base,
            repo: repo.to_string(),
            creds,
            auth_header: Mutex::new(None),
            retries: 3,
            chunk_size: 8 << 20,
        })
    }

    /// `host[:port]/repo`, for messages.
    pub fn name(&self) -> String {
        format!(
            "{}{}",
            self.base.host_str().unwrap_or(""),
            self.base
                .port()
                .map(|p| format!(":{p}"))
                .unwrap_or_default()
        ) + "/"
            + &self.repo
    }

    fn url(&self, path: &str) -> Url {
        self.base
            .join(&format!("v2/{}/{path}", self.repo))
            .expect("a registry path joins its base")
    }

    /// Send a request built by `make`, answering one auth challenge and retrying
    /// connection errors and 5xx answers with backoff. Other answers are returned as they
    /// are.
    fn send(
        &self,
        what: &str,
        make: &dyn Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, ConvertError> {
        let mut attempt = 0u32;
        let mut authed = false;
        loop {
            let mut req = make(&self.http);
            if let Some(a) = self.auth_header.lock().unwrap().clone() {
                req = req.header(AUTHORIZATION, a);
            }
            let res = req.send();
            let retry = match res {
                Ok(r) if r.status() == StatusCode::UNAUTHORIZED && !authed => {
                    authed = true;
                    let ch = r
                        .headers()
                        .get(reqwest::header::WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    self.authenticate(&ch)
                        .map_err(|e| ConvertError::Registry(format!("{what}: {e}")))?;
                    continue;
                }
                Ok(r) if r.status() == StatusCode::UNAUTHORIZED => {
                    return Err(ConvertError::Registry(format!(
                        "{what}: unauthorized (401) with the given credentials"
                    )))
                }
                Ok(r)
                    if r.status().is_server_error()
                        || r.status() == StatusCode::TOO_MANY_REQUESTS =>
                {
                    format!("{what}: {}", r.status())
                }
                Ok(r) => return Ok(r),
                Err(e) => http_err(what, e).to_string(),
            };
            if attempt >= self.retries {
                return Err(ConvertError::Registry(format!(
                    "{retry} (gave up after {} attempts)",
                    attempt + 1
                )));
            }
            log::warn!("{retry}; retrying");
            std::thread::sleep(Duration::from_millis(200 << attempt));
            attempt += 1;
        }
    }

    fn authenticate(&self, challenge: &str) -> Result<(), String> {
        let scope = format!("repository:{}:pull,push", self.repo);
        let header = match plan_auth(challenge, self.creds.as_deref(), &scope)? {
            AuthPlan::Header(h) => h,
            AuthPlan::Token { url, basic } => {
                let mut req = self.http.get(url);
                if let Some(b) = basic {
                    req = req.header(AUTHORIZATION, b);
                }
                let r = req.send().map_err(|e| format!("token request: {e}"))?;
                if !r.status().is_success() {
                    return Err(format!("token service answered {}", r.status()));
                }
                let body = r.bytes().map_err(|e| format!("token response: {e}"))?;
                bearer_from_token_response(&body)?
            }
        };
        *self.auth_header.lock().unwrap() = Some(header);
        Ok(())
    }

    fn expect(r: Response, what: &str, ok: &[StatusCode]) -> Result<Response, ConvertError> {
        if ok.contains(&r.status()) {
            return Ok(r);
        }
        let st = r.status();
        let body = r.text().unwrap_or_default();
        let body: String = body.chars().take(300).collect();
        Err(ConvertError::Registry(format!("{what}: {st} {body}")))
    }

    /// A manifest or index by tag or digest: its bytes and media type. `None` when the
    /// registry has no such manifest.
    pub fn get_manifest(&self, reference: &str) -> Result<Option<(Vec<u8>, String)>, ConvertError> {
        let url = self.url(&format!("manifests/{reference}"));
        let what = format!("GET manifest {}:{reference}", self.name());
        let r = self.send(&what, &|c| {
            c.get(url.clone()).header(ACCEPT, MANIFEST_ACCEPT)
        })?;
        if r.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let r = Self::expect(r, &what, &[StatusCode::OK])?;
        let mt = r
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let body = r.bytes().map_err(|e| http_err(&what, e))?.to_vec();
        Ok(Some((body, mt)))
    }

    /// A blob as a stream (not verified here: the caller hashes what it reads).
    pub fn get_blob(&self, digest: &str) -> Result<Box<dyn Read + Send>, ConvertError> {
        let url = self.url(&format!("blobs/{digest}"));
        let what = format!("GET blob {digest} from {}", self.name());
        let r = self.send(&what, &|c| c.get(url.clone()))?;
        Ok(Box::new(Self::expect(r, &what, &[StatusCode::OK])?))
    }

    /// The size of a blob the repository has, or `None`.
    pub fn head_blob(&self, digest: &str) -> Result<Option<u64>, ConvertError> {
        let url = self.url(&format!("blobs/{digest}"));
        let what = format!("HEAD blob {digest} on {}", self.name());
        let r = self.send(&what, &|c| c.head(url.clone()))?;
        match r.status() {
            StatusCode::OK => Ok(Some(
                r.headers()
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(ConvertError::Registry(format!("{what}: {}", r.status()))),
        }
    }

    fn location(&self, r: &Response, what: &str) -> Result<Url, ConvertError> {
        let loc = r
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ConvertError::Registry(format!("{what}: no Location")))?;
        self.base
            .join(loc)
            .map_err(|e| ConvertError::Registry(format!("{what}: Location {loc:?}: {e}")))
    }

    fn start_upload(&self, digest: &str) -> Result<Url, ConvertError> {
        let url = self.url("blobs/uploads/");
        let what = format!("start upload of {digest} to {}", self.name());
        let r = self.send(&what, &|c| c.post(url.clone()).header(CONTENT_LENGTH, "0"))?;
        let r = Self::expect(r, &what, &[StatusCode::ACCEPTED])?;
        self.location(&r, &what)
    }

    /// Where the registry's copy of an upload ends (from its `Range: 0-N`), or `None` when
    /// it no longer knows the upload.
    fn upload_offset(&self, at: &Url) -> Option<u64> {
        let r = self.http_with_auth(self.http.get(at.clone())).send().ok()?;
        if r.status() != StatusCode::NO_CONTENT {
            return None;
        }
        let range = r.headers().get(RANGE)?.to_str().ok()?;
        let end: u64 = range.rsplit('-').next()?.parse().ok()?;
        Some(end + 1)
    }

    fn http_with_auth(&self, req: RequestBuilder) -> RequestBuilder {
        match self.auth_header.lock().unwrap().clone() {
            Some(a) => req.header(AUTHORIZATION, a),
            None => req,
        }
    }

    /// Upload `size` bytes from `src` as blob `digest`, in PATCH chunks. A failed chunk is
    /// resumed from where the registry says the upload ends; each resume counts against
    /// `retries`, and a lost upload session starts over.
    pub fn put_blob<R: Read + Seek>(
        &self,
        digest: &str,
        size: u64,
        src: &mut R,
        progress: &dyn Fn(u64),
    ) -> Result<UploadStats, ConvertError> {
        let mut stats = UploadStats::default();
        let mut at = self.start_upload(digest)?;
        let mut off = 0u64;
        let mut failures = 0u32;
        let mut buf = vec![0u8; self.chunk_size.max(1)];
        while off < size {
            let n = (size - off).min(buf.len() as u64) as usize;
            src.seek(SeekFrom::Start(off))
                .and_then(|_| src.read_exact(&mut buf[..n]))
                .map_err(|e| ConvertError::Io(format!("reading blob {digest}: {e}")))?;
            let body = buf[..n].to_vec();
            let req = self
                .http_with_auth(self.http.patch(at.clone()))
                .header(CONTENT_TYPE, "application/octet-stream")
                .header("Content-Range", format!("{}-{}", off, off + n as u64 - 1))
                .header(CONTENT_LENGTH, n.to_string())
                .body(body);
            let err = match req.send() {
                Ok(r) if r.status() == StatusCode::ACCEPTED => {
                    at = self.location(&r, "PATCH")?;
                    off += n as u64;
                    stats.patches += 1;
                    progress(off);
                    continue;
                }
                Ok(r) => format!("{}", r.status()),
                Err(e) => http_err("PATCH", e).to_string(),
            };
            failures += 1;
            if failures > self.retries {
                return Err(ConvertError::Registry(format!(
                    "upload of {digest} to {} failed at byte {off}: {err} (gave up after {failures} failures)",
                    self.name()
                )));
            }
            log::warn!("upload of {digest} at byte {off}: {err}; resuming");
            std::thread::sleep(Duration::from_millis(200 << (failures - 1)));
            stats.resumes += 1;
            match self.upload_offset(&at) {
                Some(o) if o <= size => off = o,
                _ => {
                    at = self.start_upload(digest)?;
                    off = 0;
                }
            }
        }
        let mut put = at.clone();
        put.query_pairs_mut().append_pair("digest", digest);
        let what = format!("finish upload of {digest} to {}", self.name());
        let r = self.send(&what, &|c| c.put(put.clone()).header(CONTENT_LENGTH, "0"))?;
        Self::expect(r, &what, &[StatusCode::CREATED])?;
        Ok(stats)
    }

    /// Put a manifest or index under `reference` (a tag or its digest).
    pub fn put_manifest(
        &self,
        reference: &str,
        body: &[u8],
        media_type: &str,
    ) -> Result<(), ConvertError> {
        let url = self.url(&format!("manifests/{reference}"));
        let what = format!("PUT manifest {}:{reference}", self.name());
        let body = body.to_vec();
        let r = self.send(&what, &|c| {
            c.put(url.clone())
                .header(CONTENT_TYPE, media_type)
                .body(body.clone())
        })?;
        Self::expect(r, &what, &[StatusCode::CREATED, StatusCode::OK])?;
        Ok(())
    }
}
