// Command gotar writes a directory tree as a PAX tar with Go's archive/tar, the way Go
// image tools (containerd, buildkit, ko, crane) write OCI layers. It regenerates
// tests/fixtures/tars/go-archive-tar.tar; see tests/builder_gotar.rs.
//
// usage: go run hack/gotar/main.go SRC_DIR OUT.tar
package main

import (
	"archive/tar"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

func xattrs(path string) map[string]string {
	out := map[string]string{}
	buf := make([]byte, 65536)
	n, err := syscall.Listxattr(path, buf)
	if err != nil || n <= 0 {
		return out
	}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		v := make([]byte, 65536)
		m, err := syscall.Getxattr(path, name, v)
		if err == nil {
			out["SCHILY.xattr."+name] = string(v[:m])
		}
	}
	return out
}

func main() {
	src, dst := os.Args[1], os.Args[2]
	f, err := os.Create(dst)
	if err != nil {
		panic(err)
	}
	w := tar.NewWriter(f)
	seen := map[uint64]string{}
	var paths []string
	filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			panic(err)
		}
		paths = append(paths, p)
		return nil
	})
	sort.Strings(paths)
	for _, p := range paths {
		rel, _ := filepath.Rel(src, p)
		st, err := os.Lstat(p)
		if err != nil {
			panic(err)
		}
		link := ""
		if st.Mode()&os.ModeSymlink != 0 {
			link, _ = os.Readlink(p)
		}
		hdr, err := tar.FileInfoHeader(st, link)
		if err != nil {
			panic(err)
		}
		hdr.Name = rel
		if st.IsDir() && rel != "." {
			hdr.Name = rel + "/"
		}
		sys := st.Sys().(*syscall.Stat_t)
		hdr.Uid, hdr.Gid = int(sys.Uid), int(sys.Gid)
		hdr.Uname, hdr.Gname = "", ""
		hdr.Format = tar.FormatPAX
		hdr.PAXRecords = xattrs(p)
		if hdr.Typeflag == tar.TypeReg && sys.Nlink > 1 {
			if first, ok := seen[sys.Ino]; ok {
				hdr.Typeflag = tar.TypeLink
				hdr.Linkname = first
				hdr.Size = 0
			} else {
				seen[sys.Ino] = rel
			}
		}
		if err := w.WriteHeader(hdr); err != nil {
			panic(err)
		}
		if hdr.Typeflag == tar.TypeReg {
			in, err := os.Open(p)
			if err != nil {
				panic(err)
			}
			if _, err := io.Copy(w, in); err != nil {
				panic(err)
			}
			in.Close()
		}
	}
	if err := w.Close(); err != nil {
		panic(err)
	}
	f.Close()
}
