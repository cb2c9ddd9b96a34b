//! The in-memory source tree the builder writes: one [`Node`] per path, with raw-byte names,
//! full stat metadata, xattrs (binary values), symlink targets and hard-link identity.
//!
//! Trees come from a directory walk ([`Tree::from_dir`]), a tar stream
//! (`super::tarball`) or an existing bootstrap (`super::merge`).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::BuildError;
use crate::rafs::ChunkInfo;

/// Index of a node in [`Tree::nodes`]; the root is 0.
pub type NodeId = usize;

/// Where the data of a regular file comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// No data (empty file, non-regular node, or data already chunked).
    None,
    /// Read from this host path when chunking.
    Path(PathBuf),
}

/// One path of the tree.
#[derive(Clone, Debug)]
pub struct Node {
    /// File name (raw bytes; `/` for the root).
    pub name: Vec<u8>,
    pub parent: NodeId,
    /// Children, kept sorted bytewise by name (directories only).
    pub children: Vec<NodeId>,
    /// Full st_mode.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Encoded device number (st_rdev, lower 32 bits) of char/block devices.
    pub rdev: u32,
    pub mtime: u64,
    pub mtime_nsec: u32,
    /// File size (regular files) or target length (symlinks); directories: computed.
    pub size: u64,
    /// Symlink target.
    pub symlink: Vec<u8>,
    /// Extended attributes, sorted by full name.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// For a hard link: the node holding the inode (first name in tree order).
    pub link_to: Option<NodeId>,
    pub source: DataSource,
    /// Chunks of a regular file, in file order (filled by the chunker or copied from a
    /// bootstrap).
    pub chunks: Vec<ChunkInfo>,
    /// Removed by a whiteout (merge); skipped by writers.
    pub deleted: bool,
    /// A directory no source entry described (a tar parent made on the way, or a tar's
    /// root without a `./` entry): its attributes are defaults, and a merge keeps the
    /// lower layer's.
    pub implicit: bool,
}

impl Node {
    /// A fresh node with the given name and mode and no data.
    pub fn new(name: Vec<u8>, parent: NodeId, mode: u32) -> Self {
        Node {
            name,
            parent,
            children: Vec::new(),
            mode,
            uid: 0,
            gid: 0,
            rdev: 0,
            mtime: 0,
            mtime_nsec: 0,
            size: 0,
            symlink: Vec::new(),
            xattrs: BTreeMap::new(),
            link_to: None,
            source: DataSource::None,
            chunks: Vec::new(),
            deleted: false,
            implicit: false,
        }
    }
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
    pub fn is_reg(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
}

/// A whole source tree; `nodes[0]` is the root directory.
#[derive(Clone, Debug)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    /// A tree holding only a root directory (mode 0755, owned by root, mtime 0).
    pub fn new() -> Self {
        let root = Node::new(b"/".to_vec(), 0, libc::S_IFDIR | 0o755);
        Tree { nodes: vec![root] }
    }

    /// Child of `dir` named `name`, if any (live children only).
    pub fn child(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        let ch = &self.nodes[dir].children;
        ch.binary_search_by(|&c| self.nodes[c].name.as_slice().cmp(name))
            .ok()
            .map(|i| ch[i])
    }

    /// Insert `node` under `node.parent` (keeping children sorted); replaces nothing: the
    /// caller removes an existing child first.
    pub fn add(&mut self, node: Node) -> NodeId {
        let id = self.nodes.len();
        let parent = node.parent;
        let pos = {
            let ch = &self.nodes[parent].children;
            match ch.binary_search_by(|&c| self.nodes[c].name.as_slice().cmp(&node.name)) {
                Ok(p) | Err(p) => p,
            }
        };
        self.nodes.push(node);
        self.nodes[parent].children.insert(pos, id);
        id
    }

    /// Detach `id` from its parent (its subtree stays in `nodes` but is unreachable).
    pub fn detach(&mut self, id: NodeId) {
        let parent = self.nodes[id].parent;
        self.nodes[parent].children.retain(|&c| c != id);
        self.mark_deleted(id);
    }

    fn mark_deleted(&mut self, id: NodeId) {
        let mut stack = vec![id];
        while let Some(n) = stack.pop() {
            self.nodes[n].deleted = true;
            stack.extend(self.nodes[n].children.iter().copied());
        }
    }

    /// Live nodes in depth-first pre-order, children by name; the root first.
    pub fn preorder(&self) -> Vec<NodeId> {
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut stack = vec![0];
        while let Some(n) = stack.pop() {
            out.push(n);
            stack.extend(self.nodes[n].children.iter().rev().copied());
        }
        out
    }

    /// Full path of a node relative to the root, e.g. `/a/b` (the root is `/`).
    pub fn path_of(&self, mut id: NodeId) -> Vec<u8> {
        let mut parts = Vec::new();
        while id != 0 {
            parts.push(self.nodes[id].name.clone());
            id = self.nodes[id].parent;
        }
        let mut p = Vec::new();
        for part in parts.iter().rev() {
            p.push(b'/');
            p.extend_from_slice(part);
        }
        if p.is_empty() {
            p.push(b'/');
        }
        p
    }

    /// Find a node by absolute or relative path (components separated by `/`).
    pub fn lookup_path(&self, path: &[u8]) -> Option<NodeId> {
        let mut cur = 0;
        for comp in path.split(|&c| c == b'/') {
            if comp.is_empty() || comp == b"." {
                continue;
            }
            if comp == b".." {
                cur = self.nodes[cur].parent;
                continue;
            }
            cur = self.child(cur, comp)?;
        }
        Some(cur)
    }

    /// Re-point hard links whose primary was deleted and make the first live name in
    /// pre-order the primary of each link group. Call after whiteouts / merges.
    pub fn fix_hardlinks(&mut self) {
        let order = self.preorder();
        let mut primary_of: HashMap<NodeId, NodeId> = HashMap::new();
        for &n in &order {
            let group = self.nodes[n].link_to.unwrap_or(n);
            match primary_of.get(&group) {
                None => {
                    primary_of.insert(group, n);
                    if group != n {
                        // This name becomes the primary: take over the inode's data.
                        let g = self.nodes[group].clone();
                        let node = &mut self.nodes[n];
                        node.chunks = g.chunks;
                        node.source = g.source;
                        node.size = g.size;
                        node.mode = g.mode;
                        node.uid = g.uid;
                        node.gid = g.gid;
                        node.mtime = g.mtime;
                        node.mtime_nsec = g.mtime_nsec;
                        node.xattrs = g.xattrs;
                        node.link_to = None;
                    }
                }
                Some(&p) => {
                    self.nodes[n].link_to = if p == n { None } else { Some(p) };
                }
            }
        }
    }

    /// Number of names pointing at each primary node (its nlink for regular files).
    pub fn link_counts(&self, order: &[NodeId]) -> HashMap<NodeId, u32> {
        let mut m = HashMap::new();
        for &n in order {
            let p = self.nodes[n].link_to.unwrap_or(n);
            *m.entry(p).or_insert(0u32) += 1;
        }
        m
    }

    /// Walk a host directory with lstat semantics (symlinks are not followed).
    pub fn from_dir(root: &Path) -> Result<Tree, BuildError> {
        let meta = std::fs::symlink_metadata(root).map_err(|e| BuildError::io(root, e))?;
        if !meta.is_dir() {
            return Err(BuildError::Invalid(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        let mut tree = Tree::new();
        fill_from_meta(&mut tree.nodes[0], root, &meta)?;
        let mut links: HashMap<(u64, u64), NodeId> = HashMap::new();
        let mut stack: Vec<(NodeId, PathBuf)> = vec![(0, root.to_path_buf())];
        while let Some((dir, path)) = stack.pop() {
            let mut names: Vec<Vec<u8>> = Vec::new();
            for ent in std::fs::read_dir(&path).map_err(|e| BuildError::io(&path, e))? {
                let ent = ent.map_err(|e| BuildError::io(&path, e))?;
                names.push(ent.file_name().as_bytes().to_vec());
            }
            names.sort();
            for name in names {
                let p = path.join(OsStr::from_bytes(&name));
                let m = std::fs::symlink_metadata(&p).map_err(|e| BuildError::io(&p, e))?;
                let mut node = Node::new(name, dir, m.mode());
                fill_from_meta(&mut node, &p, &m)?;
                if node.is_reg() && m.nlink() > 1 {
                    if let Some(&first) = links.get(&(m.dev(), m.ino())) {
                        node.link_to = Some(first);
                        node.source = DataSource::None;
                        tree.add(node);
                        continue;
                    }
                }
                let is_dir = node.is_dir();
                let multi = node.is_reg() && m.nlink() > 1;
                let id = tree.add(node);
                if multi {
                    links.insert((m.dev(), m.ino()), id);
                }
                if is_dir {
                    stack.push((id, p));
                }
            }
        }
        Ok(tree)
    }
}

fn fill_from_meta(node: &mut Node, path: &Path, m: &std::fs::Metadata) -> Result<(), BuildError> {
    node.mode = m.mode();
    node.uid = m.uid();
    node.gid = m.gid();
    node.mtime = m.mtime().max(0) as u64;
    node.mtime_nsec = m.mtime_nsec().clamp(0, 999_999_999) as u32;
    let fmt = m.mode() & libc::S_IFMT;
    if fmt == libc::S_IFCHR || fmt == libc::S_IFBLK {
        node.rdev = m.rdev() as u32;
    }
    if node.is_reg() {
        node.size = m.size();
        node.source = DataSource::Path(path.to_path_buf());
    } else if node.is_symlink() {
        let t = std::fs::read_link(path).map_err(|e| BuildError::io(path, e))?;
        node.symlink = t.as_os_str().as_bytes().to_vec();
        node.size = node.symlink.len() as u64;
    }
    node.xattrs = read_xattrs(path)?;
    Ok(())
}

/// All extended attributes of `path` (not following symlinks), values as raw bytes.
pub fn read_xattrs(path: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, BuildError> {
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| BuildError::Invalid(format!("{}: NUL in path", path.display())))?;
    let mut out = BTreeMap::new();
    // SAFETY: cpath is a valid NUL-terminated string; a null buffer with size 0 asks for
    // the needed length only.
    let n = unsafe { libc::llistxattr(cpath.as_ptr(), std::ptr::null_mut(), 0) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOTSUP) => Ok(out),
            _ => Err(BuildError::io(path, e)),
        };
    }
    if n == 0 {
        return Ok(out);
    }
    let mut buf = vec![0u8; n as usize + 256];
    // SAFETY: buf is writable for buf.len() bytes.
    let n = unsafe { libc::llistxattr(cpath.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(BuildError::io(path, std::io::Error::last_os_error()));
    }
    buf.truncate(n as usize);
    for name in buf.split(|&c| c == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).expect("split on NUL leaves no NUL");
        // SAFETY: valid C strings; size query with a null buffer.
        let vlen =
            unsafe { libc::lgetxattr(cpath.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
        if vlen < 0 {
            return Err(BuildError::io(path, std::io::Error::last_os_error()));
        }
        let mut val = vec![0u8; vlen as usize + 1];
        // SAFETY: val is writable for val.len() bytes.
        let got = unsafe {
            libc::lgetxattr(
                cpath.as_ptr(),
                cname.as_ptr(),
                val.as_mut_ptr().cast(),
                val.len(),
            )
        };
        if got < 0 {
            return Err(BuildError::io(path, std::io::Error::last_os_error()));
        }
        val.truncate(got as usize);
        out.insert(name.to_vec(), val);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_detects_hardlinks_and_sorts() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("b"), b"x").unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        std::fs::hard_link(d.path().join("b"), d.path().join("a/c")).unwrap();
        std::os::unix::fs::symlink("b", d.path().join("s")).unwrap();
        let t = Tree::from_dir(d.path()).unwrap();
        let names: Vec<_> = t.nodes[0]
            .children
            .iter()
            .map(|&c| t.nodes[c].name.clone())
            .collect();
        assert_eq!(names, vec![b"a".to_vec(), b"b".to_vec(), b"s".to_vec()]);
        let c = t.lookup_path(b"/a/c").unwrap();
        let b = t.lookup_path(b"b").unwrap();
        // One of the two names is the primary, the other links to it.
        assert!(t.nodes[c].link_to == Some(b) || t.nodes[b].link_to == Some(c));
        let s = t.lookup_path(b"s").unwrap();
        assert_eq!(t.nodes[s].symlink, b"b");
        assert_eq!(t.path_of(c), b"/a/c");
    }
}
