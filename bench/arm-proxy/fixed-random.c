/*
 * LD_PRELOAD shim for the guest: getrandom() returns the same bytes in every run, so that hash-map
 * seeds (Rust's RandomState, Python's str hash) and hence the instructions executed do not change
 * from run to run. Built for aarch64 by bench/arm-proxy.sh; never use it outside that bench.
 */
#include <stddef.h>
#include <sys/types.h>

ssize_t getrandom(void *buf, size_t len, unsigned int flags)
{
    unsigned char *p = buf;
    (void)flags;
    for (size_t i = 0; i < len; i++)
        p[i] = (unsigned char)(i * 131u + 7u);
    return (ssize_t)len;
}
