/*
 * Which paths are filemap's. Every open and stat of every program under
 * the shim asks, so the answer for a path that is not starts with a
 * look at its first bytes, and needs no system call unless
 * $FILEMAP_PRELOAD_DIRS lists directories and the path is relative.
 *
 *	s3://BUCKET/KEY, http://HOST/PATH, https://HOST/PATH	the URI as a path
 *	/filemap/s3/BUCKET/KEY					the same, in a form that survives
 *	/filemap/http/HOST[:PORT]/PATH				path normalisation (pathlib, realpath
 *	/filemap/https/HOST[:PORT]/PATH				and shells make s3://b/k s3:/b/k)
 *	s3:/BUCKET/KEY, http:/HOST/PATH, https:/HOST/PATH	the normalised URI, unless a file
 *								"s3:" (or "http:"...) exists there
 *	a file under a directory of $FILEMAP_PRELOAD_DIRS	(DIR:DIR..., absolute paths)
 *
 * Everything under /filemap is the shim's: a path there that names no
 * object is missing, whatever the file system holds.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shim.h"

static const char prefix[] = "/filemap";

/* The remote schemes, and their names under /filemap. */
static const char *const schemes[] = {"s3", "https", "http"};

/* $FILEMAP_PRELOAD_DIRS, read once: no allocation, for a program may open
 * files before its allocator is ready. */
enum { MAX_DIRS = 32 };
static struct {
	pthread_once_t once;
	int n;
	char buf[4096];
	const char *dir[MAX_DIRS];
	size_t len[MAX_DIRS];
} dirs = {.once = PTHREAD_ONCE_INIT};

static void read_dirs(void)
{
	const char *env = getenv("FILEMAP_PRELOAD_DIRS");
	if (env == NULL || (size_t)snprintf(dirs.buf, sizeof dirs.buf, "%s", env) >= sizeof dirs.buf)
		return;
	for (char *p = dirs.buf, *next; p != NULL && dirs.n < MAX_DIRS; p = next) {
		next = strchr(p, ':');
		if (next != NULL)
			*next++ = '\0';
		size_t n = strlen(p);
		while (n > 1 && p[n - 1] == '/')
			p[--n] = '\0';
		if (p[0] != '/') /* only absolute directories: a relative one would move with the program */
			continue;
		dirs.dir[dirs.n] = p;
		dirs.len[dirs.n] = n == 1 ? 0 : n; /* "/" is every path */
		dirs.n++;
	}
}

static int have_dirs(void)
{
	pthread_once(&dirs.once, read_dirs);
	return dirs.n > 0;
}

/* under_dirs says whether the absolute path abs is inside a listed
 * directory: compared as written, component by component. */
static int under_dirs(const char *abs)
{
	for (int i = 0; i < dirs.n; i++)
		if (strncmp(abs, dirs.dir[i], dirs.len[i]) == 0 && abs[dirs.len[i]] == '/' &&
		    abs[dirs.len[i] + 1] != '\0')
			return 1;
	return 0;
}

/* scheme_at says which scheme s starts with, followed by sep; its length
 * in *n. */
static const char *scheme_at(const char *s, char sep, size_t *n)
{
	for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++) {
		size_t k = strlen(schemes[i]);
		if (strncmp(s, schemes[i], k) == 0 && s[k] == sep) {
			*n = k;
			return schemes[i];
		}
	}
	return NULL;
}

/* write_uri writes SCHEME://REST; "" if it does not fit, or if REST
 * names no object: a host or a bucket alone, with no path or key after
 * it, is what stat takes for a directory above objects. */
static void write_uri(char *uri, const char *scheme, const char *rest)
{
	const char *slash = strchr(rest, '/');
	if (slash == NULL || slash == rest || slash[1] == '\0' ||
	    (size_t)snprintf(uri, SHIM_URI_MAX, "%s://%s", scheme, rest) >= SHIM_URI_MAX)
		uri[0] = '\0';
}

/* under_prefix maps /filemap/SCHEME/REST to SCHEME://REST. */
static enum shim_kind under_prefix(const char *path, char *uri)
{
	const char *p = path + sizeof prefix - 1;
	size_t n;
	const char *scheme = *p == '/' ? scheme_at(p + 1, '/', &n) : NULL;
	uri[0] = '\0';
	if (scheme != NULL)
		write_uri(uri, scheme, p + 1 + n + 1);
	return SHIM_REMOTE;
}

/* exists says whether the relative name[0:n] exists, relative to dirfd:
 * a local "s3:" directory makes s3:/b/k a local path. */
static int exists(int dirfd, const char *name, size_t n)
{
	char first[16];
	snprintf(first, sizeof first, "%.*s", (int)n, name);
	struct stat st;
	int saved = errno;
	int rc = REAL(fstatat)(dirfd, first, &st, AT_SYMLINK_NOFOLLOW);
	errno = saved;
	return rc == 0;
}

/* absolute writes path, relative to dirfd, as an absolute path, lexically. */
static int absolute(int dirfd, const char *path, char *out, size_t cap)
{
	char dir[PATH_MAX];
	int saved = errno;
	if (dirfd == AT_FDCWD) {
		if (getcwd(dir, sizeof dir) == NULL) {
			errno = saved;
			return -1;
		}
	} else {
		char link[64];
		snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
		ssize_t n = readlink(link, dir, sizeof dir - 1);
		errno = saved;
		if (n <= 0 || dir[0] != '/')
			return -1;
		dir[n] = '\0';
	}
	return (size_t)snprintf(out, cap, "%s/%s", strcmp(dir, "/") == 0 ? "" : dir, path) < cap ? 0 : -1;
}

/* local writes a local file's absolute path as the name filemap_open
 * takes: a file:// URI if the path itself looks like one. */
static enum shim_kind local(const char *abs, char *uri)
{
	if (strstr(abs, "://") == NULL)
		return (size_t)snprintf(uri, SHIM_URI_MAX, "%s", abs) < SHIM_URI_MAX ? SHIM_LOCAL : SHIM_NONE;
	size_t o = (size_t)snprintf(uri, SHIM_URI_MAX, "file://");
	for (const char *p = abs; *p != '\0'; p++) {
		if (o + 4 >= SHIM_URI_MAX)
			return SHIM_NONE;
		if (*p == '%' || *p == '?' || *p == '#')
			o += (size_t)snprintf(uri + o, SHIM_URI_MAX - o, "%%%02X", (unsigned char)*p);
		else
			uri[o++] = *p;
	}
	uri[o] = '\0';
	return SHIM_LOCAL;
}

enum shim_kind shim_classify(int dirfd, const char *path, char uri[SHIM_URI_MAX])
{
	if (path == NULL || path[0] == '\0')
		return SHIM_NONE;
	if (path[0] == '/') {
		if (path[1] == 'f' && strncmp(path, prefix, sizeof prefix - 1) == 0 &&
		    (path[sizeof prefix - 1] == '/' || path[sizeof prefix - 1] == '\0'))
			return under_prefix(path, uri);
		if (have_dirs() && under_dirs(path))
			return local(path, uri);
		return SHIM_NONE;
	}
	size_t n;
	const char *scheme;
	if ((path[0] == 's' || path[0] == 'h') && (scheme = scheme_at(path, ':', &n)) != NULL) {
		if (path[n + 1] == '/' && path[n + 2] == '/') {
			write_uri(uri, scheme, path + n + 3);
			return SHIM_REMOTE;
		}
		if (path[n + 1] == '/' && path[n + 2] != '\0' && !exists(dirfd, path, n + 1)) {
			write_uri(uri, scheme, path + n + 2);
			return SHIM_REMOTE;
		}
	}
	char abs[PATH_MAX];
	if (have_dirs() && absolute(dirfd, path, abs, sizeof abs) == 0 && under_dirs(abs))
		return local(abs, uri);
	return SHIM_NONE;
}
