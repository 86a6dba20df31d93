// The plugin's check: a program whose executed instruction count is known exactly.
//   5 + 2 * LOOPS instructions: movz, movk, LOOPS x (subs, b.ne), mov, mov, svc.
// Built with -DLOOPS=n (n < 2^32); bench/arm-proxy.sh runs it for two values of n.
    .global _start
    .text
_start:
    movz x0, #(LOOPS & 0xffff)
    movk x0, #((LOOPS >> 16) & 0xffff), lsl #16
1:  subs x0, x0, #1
    b.ne 1b
    mov x8, #93          // exit
    mov x0, #0
    svc #0
