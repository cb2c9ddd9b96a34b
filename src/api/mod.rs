//! The nydusd-compatible HTTP API on a unix socket (KATA-CONTRACT.md §2).
//!
//! A small HTTP/1.1 server: one thread per connection, persistent connections, bodies
//! delimited by `Content-Length` or chunked encoding (or absent), `Content-Type` ignored.
//! It is hand-written rather than built on hyper to keep the daemon free of an async
//! runtime on this path; the protocol surface Kata uses is tiny.
//!
//! Endpoints:
//! - `GET /api/v1/daemon`: state, version, mounted backends.
//! - `PUT /api/v1/daemon` `{"log_level": "..."}`: change the log level.
//! - `POST /api/v1/mount?mountpoint=P` `{"fs_type","source","config"}`: mount (204).
//! - `DELETE /api/v1/mount?mountpoint=P`: unmount (204).
//! - `GET /api/v1/metrics`: per-filesystem request counters.
//!
//! Errors are `{"code": "...", "message": "..."}` with a 4xx/5xx status.

pub mod http;
pub mod prometheus;

use std::io;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::fs::rafs::RafsFs;
use crate::fs::vfs::{FsTree, FsType, MountError};
use http::{Request, Response};

/// The daemon states reported by `GET /api/v1/daemon` (nydusd's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonState {
    /// Starting; the vhost-user socket is not listening yet.
    Init,
    /// Serving (the vhost-user socket listens or the FUSE mount is up).
    Running,
    /// Shutting down.
    Stopped,
}

impl DaemonState {
    /// The string the API reports.
    pub fn as_str(self) -> &'static str {
        match self {
            DaemonState::Init => "INIT",
            DaemonState::Running => "RUNNING",
            DaemonState::Stopped => "STOPPED",
        }
    }
}

/// Everything the API handlers need.
pub struct ApiContext {
    /// The filesystem tree the API mounts into.
    pub tree: Arc<FsTree>,
    state: Mutex<DaemonState>,
    id: Option<String>,
}

impl ApiContext {
    /// A context in state INIT.
    pub fn new(tree: Arc<FsTree>, id: Option<String>) -> Arc<Self> {
        Arc::new(ApiContext {
            tree,
            state: Mutex::new(DaemonState::Init),
            id,
        })
    }

    /// Sets the reported state.
    pub fn set_state(&self, s: DaemonState) {
        *self.state.lock() = s;
    }

    /// The reported state.
    pub fn state(&self) -> DaemonState {
        *self.state.lock()
    }
}

/// The `version` object (all five members are strings, as runtime-rs requires).
pub fn version_info() -> Value {
    json!({
        "package_ver": env!("CARGO_PKG_VERSION"),
        "git_commit": env!("RAFS_VIRTIOFSD_GIT_COMMIT"),
        "build_time": env!("RAFS_VIRTIOFSD_BUILD_TIME"),
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "rustc": env!("RAFS_VIRTIOFSD_RUSTC"),
    })
}

/// Errors of the API server itself.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be bound.
    #[error("cannot listen on API socket {path}: {source}")]
    Bind {
        /// Socket path.
        path: String,
        /// Underlying error.
        source: io::Error,
    },
}

/// Connections served at once; more are closed at accept (each holds a thread).
pub const MAX_API_CONNECTIONS: usize = 64;

/// Binds the API socket at `path` (removing a stale file) and serves it on a background
/// thread, one thread per connection, at most [`MAX_API_CONNECTIONS`] at once.
pub fn start(path: &Path, ctx: Arc<ApiContext>) -> Result<(), ApiError> {
    serve(bind(path)?, ctx)
}

/// Binds the API socket at `path`, removing a stale file; [`serve`] serves it later (the
/// daemon binds before it confines itself, when the path is still reachable).
pub fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path).map_err(|e| ApiError::Bind {
        path: path.display().to_string(),
        source: e,
    })
}

/// Serves a bound API socket on a background thread, as [`start`].
pub fn serve(listener: UnixListener, ctx: Arc<ApiContext>) -> Result<(), ApiError> {
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
        .unwrap_or_default();
    let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("api-server".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        use std::sync::atomic::Ordering;
                        if live.fetch_add(1, Ordering::AcqRel) >= MAX_API_CONNECTIONS {
                            live.fetch_sub(1, Ordering::AcqRel);
                            log::warn!(
                                "api: {MAX_API_CONNECTIONS} connections open, closing a new one"
                            );
                            drop(stream);
                            continue;
                        }
                        let ctx = ctx.clone();
                        let live2 = live.clone();
                        let r =
                            std::thread::Builder::new()
                                .name("api-conn".into())
                                .spawn(move || {
                                    http::serve_connection(stream, &|req| handle(&ctx, req));
                                    live2.fetch_sub(1, Ordering::AcqRel);
                                });
                        if let Err(e) = r {
                            live.fetch_sub(1, Ordering::AcqRel);
                            log::warn!("api: cannot spawn connection thread: {e}");
                        }
                    }
                    Err(e) => {
                        log::warn!("api: accept failed: {e}");
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                }
            }
        })
        .map_err(|e| ApiError::Bind { path, source: e })?;
    Ok(())
}

fn error(status: u16, code: &str, message: impl Into<String>) -> Response {
    Response::json(status, &json!({"code": code, "message": message.into()}))
}

fn mount_error(e: &MountError) -> Response {
    let code = match e {
        MountError::UnknownFsType(_) | MountError::BadMountpoint(..) => "INVALID_ARGUMENT",
        MountError::NotMounted(_) => "NOT_FOUND",
        MountError::AlreadyMounted(_) => "ALREADY_EXISTS",
        _ => "MOUNT_FAILED",
    };
    error(e.http_status(), code, e.to_string())
}

#[derive(Deserialize)]
struct MountBody {
    fs_type: String,
    source: String,
    #[serde(default)]
    config: String,
    #[serde(default)]
    #[allow(dead_code)]
    prefetch_files: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct DaemonConfBody {
    log_level: String,
}

/// Routes one request. Public so tests can exercise it without a socket.
pub fn handle(ctx: &ApiContext, req: &Request) -> Response {
    let method = req.method.as_str();
    match req.path.as_str() {
        "/api/v1/daemon" => match method {
            "GET" => Response::json(
                200,
                &json!({
                    "version": version_info(),
                    "id": ctx.id,
                    "supervisor": null,
                    "state": ctx.state().as_str(),
                    "backend_collection": ctx.tree.backend_collection(),
                }),
            ),
            "PUT" => {
                let body: DaemonConfBody = match serde_json::from_slice(&req.body) {
                    Ok(b) => b,
                    Err(e) => return error(400, "INVALID_ARGUMENT", format!("bad body: {e}")),
                };
                match body.log_level.parse::<log::LevelFilter>() {
                    Ok(l) => {
                        log::set_max_level(l);
                        log::info!("log level set to {l}");
                        Response::empty(204)
                    }
                    Err(_) => error(
                        400,
                        "INVALID_ARGUMENT",
                        format!("unknown log_level {:?}", body.log_level),
                    ),
                }
            }
            _ => error(405, "METHOD_NOT_ALLOWED", format!("{method} not allowed")),
        },
        "/api/v1/mount" => {
            let mp = match req.query_param("mountpoint") {
                Some(m) if !m.is_empty() => m,
                _ => {
                    return error(
                        400,
                        "INVALID_ARGUMENT",
                        "missing query parameter mountpoint",
                    )
                }
            };
            match method {
                "POST" => {
                    let body: MountBody = match serde_json::from_slice(&req.body) {
                        Ok(b) => b,
                        Err(e) => {
                            return error(400, "INVALID_ARGUMENT", format!("bad mount body: {e}"))
                        }
                    };
                    let r = FsType::parse(&body.fs_type)
                        .and_then(|t| ctx.tree.mount(t, &body.source, &body.config, &mp));
                    match r {
                        Ok(()) => Response::empty(204),
                        Err(e) => {
                            log::warn!("api: mount {mp} failed: {e}");
                            mount_error(&e)
                        }
                    }
                }
                "DELETE" => match ctx.tree.umount(&mp) {
                    Ok(()) => Response::empty(204),
                    Err(e) => {
                        log::warn!("api: umount {mp} failed: {e}");
                        mount_error(&e)
                    }
                },
                _ => error(405, "METHOD_NOT_ALLOWED", format!("{method} not allowed")),
            }
        }
        "/api/v1/metrics" => match method {
            "GET" => Response::json(200, &ctx.tree.metrics_json()),
            _ => error(405, "METHOD_NOT_ALLOWED", format!("{method} not allowed")),
        },
        "/api/v1/metrics/backend" | "/api/v1/metrics/blobcache" => match method {
            "GET" => {
                let f = if req.path.ends_with("/backend") {
                    RafsFs::backend_metrics
                } else {
                    RafsFs::blobcache_metrics
                };
                match ctx
                    .tree
                    .rafs_metrics_by(req.query_param("id").as_deref(), f)
                {
                    Ok(v) => Response::json(200, &v),
                    Err(e) => mount_error(&e),
                }
            }
            _ => error(405, "METHOD_NOT_ALLOWED", format!("{method} not allowed")),
        },
        "/metrics" => match method {
            "GET" => Response::text(
                200,
                prometheus::render(&ctx.tree.metrics_json()),
                prometheus::CONTENT_TYPE,
            ),
            _ => error(405, "METHOD_NOT_ALLOWED", format!("{method} not allowed")),
        },
        other => error(404, "NOT_FOUND", format!("no such endpoint {other}")),
    }
}
