// flag[0]: set nonzero by the host to release; flag[1]: written by the kernel on exit
// (1 = released, 2 = timed out); flag[2]: set to 1 as soon as the kernel runs.
extern "C" __global__ void chorus_spin(unsigned int* flag, unsigned long long timeout_ns) {
    volatile unsigned int* f = flag;
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    long long c0 = clock64();
    f[2] = 1;
    __threadfence_system();
    for (;;) {
        if (f[0] != 0) { f[1] = 1; __threadfence_system(); return; }
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        if (t - t0 > timeout_ns || (unsigned long long)(clock64() - c0) > 2ull * timeout_ns) {
            f[1] = 2; __threadfence_system(); return;
        }
    }
}
