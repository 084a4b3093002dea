/* Loaded into Debian's OpenDKIM 2.11.0 (LD_PRELOAD) by bench/side-by-side.sh.
 *
 * That OpenDKIM creates a libunbound context for each key lookup and reads
 * its ResolverConfiguration file into it with ub_ctx_config(), whose
 * parser (flex) is not reentrant: with concurrent messages the reads
 * collide ("fatal flex scanner internal error") and the milter exits.
 * Upstream fixed it after 2.11.0 by holding a mutex around the call
 * (OpenDKIM issue #14, opendkim/opendkim-dns.c); this does the same from
 * outside, for every caller in the process. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>

struct ub_ctx;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

int ub_ctx_config(struct ub_ctx *ctx, const char *fname)
{
	static int (*real)(struct ub_ctx *, const char *);
	int status;

	pthread_mutex_lock(&lock);
	if (real == NULL)
		real = (int (*)(struct ub_ctx *, const char *)) dlsym(RTLD_NEXT, "ub_ctx_config");
	status = real == NULL ? -1 : real(ctx, fname);
	pthread_mutex_unlock(&lock);
	return status;
}
