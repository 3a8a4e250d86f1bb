/* A tiny Firecracker test guest that stays up: prints a marker on the serial port, then
   halts in a loop (the vCPU idles) until the VMM is paused, snapshotted or killed. */
.code64
.globl _start
_start:
    lea msg(%rip), %rsi
    mov $(msg_end - msg), %rcx
1:  mov $0x3f8, %dx
    lodsb
    out %al, %dx
    loop 1b
2:  hlt
    jmp 2b
msg: .ascii "FUSE-TINY-LOOP\n"
msg_end:
