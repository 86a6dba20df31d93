/*
 * insncount: a qemu TCG plugin that counts the guest instructions a program executes.
 *
 *   gcc -O2 -shared -fPIC -o libinsncount.so insncount.c
 *   qemu-aarch64 -plugin ./libinsncount.so,outfile=/tmp/count PROGRAM ...
 *
 * At exit it writes "insns N vcpus M" to outfile (or through qemu_plugin_outs, which needs `-d plugin`,
 * when no outfile is given); M is the number of guest threads that ever ran at once (qemu-user gives each
 * thread a vcpu). Each translated block gets an inline add of its instruction count to one counter:
 * cheap, and exact while one thread runs at a time (adds from threads running together can be lost).
 * With `perthread=on` a callback adds each block to its thread's own counter instead (exact whatever
 * the threads do, about twice as slow) and the line ends with each thread's count: "... threads A B C".
 * An instruction in a block that faults part-way (a page fault, a signal) is counted as executed.
 *
 * qemu installs no header for the plugin API; the few declarations it needs are copied from
 * include/qemu/qemu-plugin.h of qemu 7.x (QEMU_PLUGIN_VERSION 1), which Debian bookworm ships.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_simple_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 = 0 };
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS = 0 };

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_init_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_simple_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                              uint64_t imm);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
void qemu_plugin_outs(const char *string);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

#define MAX_THREADS 256

static uint64_t insns;
static uint64_t per_thread[MAX_THREADS];
static int perthread;
static unsigned int vcpus;
static char *outfile;

static void tb_exec(unsigned int vcpu_index, void *userdata)
{
    per_thread[vcpu_index < MAX_THREADS ? vcpu_index : MAX_THREADS - 1] += (uint64_t)(uintptr_t)userdata;
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    (void)id;
    if (perthread)
        qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_exec, QEMU_PLUGIN_CB_NO_REGS, (void *)(uintptr_t)n);
    else
        qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insns, n);
}

static void vcpu_init(qemu_plugin_id_t id, unsigned int vcpu_index)
{
    (void)id;
    if (vcpu_index + 1 > vcpus)
        vcpus = vcpu_index + 1;
}

static void at_exit(qemu_plugin_id_t id, void *userdata)
{
    static char line[64 + 24 * MAX_THREADS];
    size_t len;
    unsigned int shown = vcpus < MAX_THREADS ? vcpus : MAX_THREADS;
    (void)id;
    (void)userdata;
    if (perthread)
        for (unsigned int i = 0; i < shown; i++)
            insns += per_thread[i];
    len = (size_t)snprintf(line, 64, "insns %" PRIu64 " vcpus %u", insns, vcpus);
    if (perthread) {
        len += (size_t)snprintf(line + len, sizeof line - len, " threads");
        for (unsigned int i = 0; i < shown; i++)
            len += (size_t)snprintf(line + len, sizeof line - len, " %" PRIu64, per_thread[i]);
    }
    snprintf(line + len, sizeof line - len, "\n");
    if (outfile) {
        FILE *f = fopen(outfile, "w");
        if (f) {
            fputs(line, f);
            fclose(f);
            return;
        }
    }
    qemu_plugin_outs(line);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const void *info, int argc,
                                                               char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "outfile=", 8) == 0) {
            outfile = strdup(argv[i] + 8);
        } else if (strcmp(argv[i], "perthread=on") == 0) {
            perthread = 1;
        } else if (strcmp(argv[i], "perthread=off") == 0) {
            perthread = 0;
        } else {
            fprintf(stderr, "insncount: unknown argument '%s' (outfile=PATH, perthread=on|off)\n", argv[i]);
            return -1;
        }
    }
    qemu_plugin_register_vcpu_init_cb(id, vcpu_init);
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
