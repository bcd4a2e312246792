/*
 * json: the library's JSON decoder (src/json.c) on payloads the Go tests
 * give it, to compare with Go's encoding/json. On stdin, records of a
 * 4-byte little-endian length and a payload; for each, a line on stdout:
 * "ok HANDLE SIZE VERSION" (VERSION in hex, "-" if absent), as an open
 * reply's fields decode, or "err".
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

int main(void)
{
	unsigned char len[4];
	while (fread(len, 1, 4, stdin) == 4) {
		size_t n = (size_t)len[0] | (size_t)len[1] << 8 | (size_t)len[2] << 16 | (size_t)len[3] << 24;
		char *p = malloc(n ? n : 1);
		if (p == NULL || fread(p, 1, n, stdin) != n)
			return 1;
		uint64_t handle = 0;
		int64_t size = 0;
		char *version = NULL;
		struct fm_json_field fields[] = {
			{"handle", FM_JSON_UINT, &handle},
			{"size", FM_JSON_INT, &size},
			{"version", FM_JSON_STRING, &version},
		};
		if (fm_json_decode(p, n, fields, 3) < 0) {
			printf("err\n");
		} else {
			printf("ok %" PRIu64 " %" PRId64 " ", handle, size);
			for (char *v = version; v != NULL && *v; v++)
				printf("%02x", (unsigned char)*v);
			printf("%s\n", version == NULL ? "-" : "");
		}
		free(version);
		free(p);
	}
	return 0;
}
