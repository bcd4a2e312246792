// Package python is the home of filemap's Python module: filemap/ is the
// package, src/filemapmodule.c its extension (libfilemap for Python, with
// libfilemap compiled in), backend/ the build backend that `pip install
// ./python` runs, and tests/ the module's unittest scripts. The package's
// Go tests install the module into a venv of Debian's python3, as a user
// does, and run those scripts as real client processes of real handlers,
// against a local file, an HTTP server and a real S3 server.
package python
