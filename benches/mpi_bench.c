/*
 * mpi_bench: the MPI counterpart of chorus-bench (benches/src), for benches/compare_mpi.py.
 *
 * Same collectives, sizes, iteration scaling, timing method, buffer placement and checks as
 * chorus-bench, for all_reduce (float32 sum, in place: MPI_IN_PLACE), broadcast (bytes, root 0),
 * all_gather and all_to_all (bytes):
 *
 *   - Sizes are total buffer bytes (nccl-tests convention). all_reduce and broadcast move
 *     size/4*4 bytes; all_gather's per-rank block and all_to_all's per-peer block are
 *     size/4/nranks elements of 4 bytes (all_to_all's send and receive buffers are both the whole
 *     size); rows whose block would be empty are skipped.
 *   - Per size: the buffers are allocated and filled, warm-up iterations, barrier, the timed loop
 *     (wall clock, CLOCK_MONOTONIC), mean time per iteration, maximum over ranks. For a size S
 *     (after rounding to whole blocks): min(-n, max(1, CAP/S)) timed and
 *     min(-w, max(1, CAP/(4*S))) warm-up iterations, CAP = --max-bytes-per-size (256M).
 *   - Check: one more untimed iteration on freshly filled buffers (outputs poisoned with 0xa5),
 *     every element compared with the expected pattern (benches/src/pattern.rs), #wrong summed
 *     over ranks.
 *   - Buffers sit 64 bytes past a page boundary (CHORUS_BENCH_SKEW overrides the 64).
 *
 * Output: the nccl-tests style table of chorus-bench on stdout (rank 0) and, with --json FILE,
 * the JSON shape of chorus-bench --json (benches/src/report.rs), with "bench": "mpi".
 *
 *   mpicc -O2 -o mpi_bench benches/mpi_bench.c
 *   mpirun -np 2 ./mpi_bench all_reduce,broadcast -b 8 -e 64M -f 4 -n 20 -w 5 --json out.json
 */
#define _GNU_SOURCE
#include <mpi.h>
#include <sched.h>
#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *ALL[] = {"all_reduce", "broadcast", "all_gather", "all_to_all"};
#define NALL 4
#define ESZ 4 /* float32: the only data type (chorus-bench's default) */

struct args {
    const char *colls;
    uint64_t min_bytes, max_bytes, factor, step_bytes, cap;
    uint64_t iters, warmup;
    int root, check;
    const char *json;
};

static int me, nranks;

static void die(const char *msg) {
    if (me == 0) fprintf(stderr, "mpi_bench: %s\n", msg);
    MPI_Abort(MPI_COMM_WORLD, 2);
    exit(2);
}

/* "8", "64K", "16M", "1G", "1.5M", "64KB" (powers of 1024), as benches/src/args.rs. */
static uint64_t parse_size(const char *s) {
    char t[64];
    size_t n = strlen(s);
    if (n == 0 || n >= sizeof t) die("bad size");
    for (size_t i = 0; i <= n; i++) t[i] = (char)toupper((unsigned char)s[i]);
    if (n > 2 && strcmp(t + n - 2, "IB") == 0) t[n -= 2] = 0;
    else if (n > 1 && t[n - 1] == 'B') t[--n] = 0;
    uint64_t mult = 1;
    if (n > 0 && (t[n - 1] == 'K' || t[n - 1] == 'M' || t[n - 1] == 'G')) {
        mult = t[n - 1] == 'K' ? 1ull << 10 : t[n - 1] == 'M' ? 1ull << 20 : 1ull << 30;
        t[--n] = 0;
    }
    char *end;
    errno = 0;
    double v = strtod(t, &end);
    if (n == 0 || *end || errno || v < 0) {
        char m[128];
        snprintf(m, sizeof m, "bad size \"%s\": expected a number with an optional K, M or G suffix", s);
        die(m);
    }
    unsigned long long whole = strtoull(t, &end, 10);
    if (!*end) return (uint64_t)whole * mult;
    return (uint64_t)(v * (double)mult);
}

static uint64_t parse_u(const char *s) {
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (!*s || *end) die("bad number");
    return v;
}

static void usage(void) {
    if (me == 0)
        printf("usage: mpirun -np N mpi_bench [COLLECTIVES] [-b MIN] [-e MAX] [-f FACTOR] [-i STEP]\n"
               "                [-n ITERS] [-w WARMUP] [-r ROOT] [-c 0|1] [-d float] [-o sum]\n"
               "                [--max-bytes-per-size CAP] [--json FILE]\n"
               "COLLECTIVES: comma list of all_reduce, broadcast, all_gather, all_to_all, or all\n");
}

static void parse_args(int argc, char **argv, struct args *a) {
    *a = (struct args){"all", 8, 16ull << 20, 4, 1ull << 20, 256ull << 20, 20, 5, 0, 1, NULL};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(s, l) (strcmp(o, s) == 0 || strcmp(o, l) == 0)
        if (OPT("-h", "--help")) { usage(); MPI_Finalize(); exit(0); }
        if (o[0] != '-') { a->colls = o; continue; }
        if (!v) die("missing option value");
        if (OPT("-b", "--minbytes")) a->min_bytes = parse_size(v);
        else if (OPT("-e", "--maxbytes")) a->max_bytes = parse_size(v);
        else if (OPT("-f", "--stepfactor")) a->factor = parse_u(v);
        else if (OPT("-i", "--stepbytes")) a->step_bytes = parse_size(v);
        else if (OPT("-n", "--iters")) a->iters = parse_u(v);
        else if (OPT("-w", "--warmup_iters")) a->warmup = parse_u(v);
        else if (OPT("-r", "--root")) a->root = (int)parse_u(v);
        else if (OPT("-c", "--check")) a->check = (int)parse_u(v);
        else if (OPT("-d", "--datatype")) { if (strcmp(v, "float") && strcmp(v, "float32") && strcmp(v, "f32")) die("only -d float"); }
        else if (OPT("-o", "--op")) { if (strcmp(v, "sum")) die("only -o sum"); }
        else if (OPT("--max-bytes-per-size", "--cap")) a->cap = parse_size(v);
        else if (OPT("--json", "--json")) a->json = v;
        else { char m[128]; snprintf(m, sizeof m, "unknown option %s", o); die(m); }
        i++;
#undef OPT
    }
    if (a->min_bytes > a->max_bytes) die("-b is larger than -e");
    if (a->root < 0 || a->root >= nranks) die("--root is not a rank of the group");
}

/* ---- buffers: 64 bytes past a page boundary, as benches/src/coll.rs AlignedBuf ---- */

struct buf { unsigned char *raw, *p; size_t len; };

static struct buf buf_new(size_t len) {
    struct buf b;
    b.raw = calloc(len + 8192, 1); /* vec![0u8; len + 8192] */
    if (!b.raw) die("out of memory");
    const char *e = getenv("CHORUS_BENCH_SKEW");
    size_t skew = 64;
    if (e && *e) { char *end; unsigned long long v = strtoull(e, &end, 10); if (!*end) skew = v; }
    size_t off = (4096 - (uintptr_t)b.raw % 4096) % 4096 + skew;
    b.p = b.raw + off;
    b.len = len;
    return b;
}

/* ---- patterns: benches/src/pattern.rs ---- */

static unsigned char pat(int src, int blk, size_t k) {
    return (unsigned char)((uint32_t)(k % 251) + 13u * (uint32_t)src + 29u * (uint32_t)blk + 1u);
}

static void fill_bytes(unsigned char *b, size_t len, int src, int blk) {
    unsigned char period[251];
    for (int k = 0; k < 251; k++) period[k] = pat(src, blk, k);
    for (size_t pos = 0; pos < len; pos += 251) memcpy(b + pos, period, len - pos < 251 ? len - pos : 251);
}

/* Elements (of ESZ bytes) of b that differ from the pattern (src, blk). */
static uint64_t count_wrong_bytes(const unsigned char *b, size_t len, int src, int blk) {
    unsigned char period[251 * ESZ];
    for (size_t k = 0; k < sizeof period; k++) period[k] = pat(src, blk, k);
    uint64_t wrong = 0;
    for (size_t pos = 0; pos < len; pos += sizeof period) {
        size_t take = len - pos < sizeof period ? len - pos : sizeof period;
        if (memcmp(b + pos, period, take) == 0) continue;
        for (size_t e = 0; e < take; e += ESZ)
            if (memcmp(b + pos + e, period + e, take - e < ESZ ? take - e : ESZ)) wrong++;
    }
    return wrong;
}

/* Sum: rank r contributes (j + 3r) % 8 at element j of the period 16 * nranks. */
static float *in_period, *exp_period;
static size_t period_elems;

static void make_periods(void) {
    period_elems = 16 * (size_t)nranks;
    in_period = malloc(period_elems * sizeof(float));
    exp_period = malloc(period_elems * sizeof(float));
    for (size_t j = 0; j < period_elems; j++) {
        long s = 0;
        for (int r = 0; r < nranks; r++) s += (long)((j + 3 * (size_t)r) % 8);
        in_period[j] = (float)((j + 3 * (size_t)me) % 8);
        exp_period[j] = (float)s;
    }
}

static void tile(unsigned char *b, size_t len, const float *period) {
    size_t plen = period_elems * sizeof(float);
    for (size_t pos = 0; pos < len; pos += plen) memcpy(b + pos, period, len - pos < plen ? len - pos : plen);
}

static uint64_t count_wrong_tiled(const unsigned char *b, size_t len, const float *period) {
    size_t plen = period_elems * sizeof(float);
    const unsigned char *p = (const unsigned char *)period;
    uint64_t wrong = 0;
    for (size_t pos = 0; pos < len; pos += plen) {
        size_t take = len - pos < plen ? len - pos : plen;
        if (memcmp(b + pos, p, take) == 0) continue;
        for (size_t e = 0; e < take; e += ESZ)
            if (memcmp(b + pos + e, p + e, ESZ)) wrong++;
    }
    return wrong;
}

/* ---- one case per (collective, size): benches/src/coll.rs ---- */

struct shape { uint64_t size, count; double factor; int reduces, rooted; };

static int shape_of(const char *c, uint64_t bytes, struct shape *s) {
    double nf = nranks;
    if (!strcmp(c, "all_reduce")) {
        uint64_t n = bytes / ESZ;
        *s = (struct shape){n * ESZ, n, 2.0 * (nf - 1.0) / nf, 1, 0};
    } else if (!strcmp(c, "broadcast")) {
        uint64_t n = bytes / ESZ;
        *s = (struct shape){n * ESZ, n, 1.0, 0, 1};
    } else { /* all_gather, all_to_all */
        uint64_t block = bytes / ESZ / (uint64_t)nranks;
        *s = (struct shape){block * (uint64_t)nranks * ESZ, block, (nf - 1.0) / nf, 0, 0};
    }
    return s->count != 0;
}

struct cas { const char *c; int root; size_t total, block; struct buf a, b; };

static void case_fill(struct cas *k) {
    if (!strcmp(k->c, "all_reduce")) tile(k->a.p, k->a.len, in_period);
    else if (!strcmp(k->c, "broadcast")) fill_bytes(k->a.p, k->a.len, me, me == k->root ? 0 : 7);
    else if (!strcmp(k->c, "all_gather")) fill_bytes(k->a.p, k->a.len, me, 0);
    else if (!strcmp(k->c, "all_to_all"))
        for (int p = 0; p < nranks; p++) fill_bytes(k->a.p + (size_t)p * k->block, k->block, me, p);
    memset(k->b.p, 0xa5, k->b.len); /* poison outputs */
}

static struct cas case_new(const char *c, int root, const struct shape *s) {
    struct cas k = {c, root, (size_t)s->size, (size_t)s->size, {0}, {0}};
    size_t a_len = k.total, b_len = 0;
    if (!strcmp(c, "all_gather")) { k.block = k.total / nranks; a_len = k.block; b_len = k.total; }
    if (!strcmp(c, "all_to_all")) { k.block = k.total / nranks; b_len = k.total; }
    if (k.total > (size_t)INT32_MAX) die("size too large for an int count");
    k.a = buf_new(a_len);
    k.b = buf_new(b_len);
    case_fill(&k);
    return k;
}

static void case_run(struct cas *k) {
    int rc;
    if (!strcmp(k->c, "all_reduce"))
        rc = MPI_Allreduce(MPI_IN_PLACE, k->a.p, (int)(k->total / ESZ), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    else if (!strcmp(k->c, "broadcast"))
        rc = MPI_Bcast(k->a.p, (int)k->total, MPI_BYTE, k->root, MPI_COMM_WORLD);
    else if (!strcmp(k->c, "all_gather"))
        rc = MPI_Allgather(k->a.p, (int)k->block, MPI_BYTE, k->b.p, (int)k->block, MPI_BYTE, MPI_COMM_WORLD);
    else
        rc = MPI_Alltoall(k->a.p, (int)k->block, MPI_BYTE, k->b.p, (int)k->block, MPI_BYTE, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) die("collective failed");
}

static uint64_t case_verify(const struct cas *k) {
    uint64_t w = 0;
    if (!strcmp(k->c, "all_reduce")) return count_wrong_tiled(k->a.p, k->a.len, exp_period);
    if (!strcmp(k->c, "broadcast")) return count_wrong_bytes(k->a.p, k->a.len, k->root, 0);
    for (int s = 0; s < nranks; s++) /* block s of the output came from rank s */
        w += count_wrong_bytes(k->b.p + (size_t)s * k->block, k->block, s, !strcmp(k->c, "all_gather") ? 0 : me);
    return w;
}

static void case_free(struct cas *k) { free(k->a.raw); free(k->b.raw); }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static const char *us(double t, char *out) {
    if (t >= 1e6) sprintf(out, "%.0f", t); else sprintf(out, "%.2f", t);
    return out;
}

struct row { const char *op; uint64_t size, count; const char *redop; int root; double time_us, algbw, busbw; uint64_t wrong, iters; };

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s && *s != '\n'; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', f);
        if ((unsigned char)*s >= 0x20) fputc(*s, f);
    }
    fputc('"', f);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    struct args a;
    parse_args(argc, argv, &a);
    make_periods();

    /* The collectives, in the order asked. */
    const char *colls[64];
    int ncolls = 0;
    if (!strcmp(a.colls, "all")) {
        for (int i = 0; i < NALL; i++) colls[ncolls++] = ALL[i];
    } else {
        char *list = strdup(a.colls), *save = NULL;
        for (char *t = strtok_r(list, ",", &save); t && ncolls < 64; t = strtok_r(NULL, ",", &save)) {
            for (char *q = t; *q; q++) if (*q == '-') *q = '_';
            const char *name = !strcmp(t, "allreduce") ? "all_reduce" : !strcmp(t, "allgather") ? "all_gather"
                             : !strcmp(t, "alltoall") ? "all_to_all" : t;
            int found = 0;
            for (int i = 0; i < NALL; i++) if (!strcmp(name, ALL[i])) { colls[ncolls++] = ALL[i]; found = 1; }
            if (!found) { char m[160]; snprintf(m, sizeof m, "unknown collective \"%s\"; expected all_reduce, broadcast, all_gather, all_to_all or all", t); die(m); }
        }
    }

    char lib[MPI_MAX_LIBRARY_VERSION_STRING];
    int liblen;
    MPI_Get_library_version(lib, &liblen);
    char *nl = strchr(lib, '\n');
    if (nl) *nl = 0;
    nl = strchr(lib, ',');
    if (nl) *nl = 0;
    /* Open MPI binds each rank to a core by default when the ranks fit the cores (2 ranks on 2
     * cores) and binds nothing when oversubscribed; chorus-bench binds nothing. Say which. */
    cpu_set_t cs;
    int ncpu = sched_getaffinity(0, sizeof cs, &cs) == 0 ? CPU_COUNT(&cs) : -1, ncpu_max;
    MPI_Allreduce(&ncpu, &ncpu_max, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (me == 0) {
        printf("# mpi_bench: nranks %d, datatype float, redop sum, root %d, sizes %llu..%llu x%llu, iters %llu warmup %llu "
               "(capped at %llu bytes per size), check %d, library %s, cpus per rank %d (max over ranks)\n",
               nranks, a.root, (unsigned long long)a.min_bytes, (unsigned long long)a.max_bytes, (unsigned long long)a.factor,
               (unsigned long long)a.iters, (unsigned long long)a.warmup, (unsigned long long)a.cap, a.check, lib, ncpu_max);
        fflush(stdout);
    }

    struct row *rows = NULL;
    size_t nrows = 0, cap_rows = 0;
    uint64_t total_wrong = 0;
    for (int ci = 0; ci < ncolls; ci++) {
        const char *c = colls[ci];
        if (me == 0) {
            printf("#\n# Collective: %s\n", c);
            printf("#       size         count      type   redop    root     time   algbw   busbw #wrong\n");
            printf("#        (B)    (elements)                               (us)  (GB/s)  (GB/s)       \n");
            fflush(stdout);
        }
        size_t first = nrows;
        for (uint64_t bytes = a.min_bytes; bytes <= a.max_bytes;) {
            struct shape s;
            if (shape_of(c, bytes, &s)) {
                uint64_t work = s.size ? s.size : 1;
                uint64_t by_cap = a.cap / work; if (by_cap < 1) by_cap = 1;
                uint64_t iters = a.iters < by_cap ? a.iters : by_cap; if (iters < 1) iters = 1;
                uint64_t wcap = a.cap / (4 * work); if (wcap < 1) wcap = 1;
                uint64_t warm = a.warmup < wcap ? a.warmup : wcap;
                struct cas k = case_new(c, a.root, &s);
                for (uint64_t i = 0; i < warm; i++) case_run(&k);
                MPI_Barrier(MPI_COMM_WORLD);
                double t0 = now();
                for (uint64_t i = 0; i < iters; i++) case_run(&k);
                double per_iter = (now() - t0) / (double)iters;
                uint64_t wrong = 0;
                if (a.check) {
                    case_fill(&k);
                    case_run(&k);
                    wrong = case_verify(&k);
                }
                case_free(&k);
                double t;
                uint64_t w;
                MPI_Allreduce(&per_iter, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
                MPI_Allreduce(&wrong, &w, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
                total_wrong += w;
                double algbw = s.size ? (double)s.size / t / 1e9 : 0.0;
                if (nrows == cap_rows) rows = realloc(rows, (cap_rows = cap_rows ? 2 * cap_rows : 64) * sizeof *rows);
                struct row r = {c, s.size, s.count, s.reduces ? "sum" : "none", s.rooted ? a.root : -1,
                                t * 1e6, algbw, algbw * s.factor, w, iters};
                rows[nrows++] = r;
                if (me == 0) {
                    char b[32];
                    printf("%12llu%14llu%10s%8s%8d%9s%8.2f%8.2f%7llu\n", (unsigned long long)r.size, (unsigned long long)r.count,
                           "float", r.redop, r.root, us(r.time_us, b), r.algbw, r.busbw, (unsigned long long)r.wrong);
                    fflush(stdout);
                }
            }
            uint64_t next = a.factor > 1 ? bytes * a.factor : bytes + (a.step_bytes ? a.step_bytes : 1);
            if (next <= bytes) break;
            bytes = next;
        }
        if (me == 0) {
            uint64_t w = 0;
            double bw = 0;
            for (size_t i = first; i < nrows; i++) { w += rows[i].wrong; bw += rows[i].busbw; }
            printf("# Out of bounds values : %llu %s\n", (unsigned long long)w, w == 0 ? "OK" : "FAILED");
            printf("# Avg bus bandwidth    : %.4f\n", nrows > first ? bw / (double)(nrows - first) : 0.0);
            fflush(stdout);
        }
    }
    if (me == 0 && ncolls > 1) {
        double bw = 0;
        for (size_t i = 0; i < nrows; i++) bw += rows[i].busbw;
        printf("#\n# All collectives:\n# Out of bounds values : %llu %s\n# Avg bus bandwidth    : %.4f\n",
               (unsigned long long)total_wrong, total_wrong == 0 ? "OK" : "FAILED", nrows ? bw / (double)nrows : 0.0);
        fflush(stdout);
    }
    int rc = 0;
    if (me == 0 && a.json) {
        FILE *f = fopen(a.json, "w");
        if (!f) { fprintf(stderr, "mpi_bench: cannot write %s: %s\n", a.json, strerror(errno)); rc = 1; }
        else {
            fprintf(f, "{\n  \"bench\": \"mpi\",\n  \"library\": ");
            json_str(f, lib);
            fprintf(f, ",\n  \"cpus_per_rank\": %d,\n  \"nranks\": %d,\n  \"transports_rank0\": [],\n  \"results\": [", ncpu_max, nranks);
            for (size_t i = 0; i < nrows; i++) {
                const struct row *r = &rows[i];
                fprintf(f, "%s\n    {\"op\": \"%s\", \"size\": %llu, \"count\": %llu, \"dtype\": \"float\", \"redop\": \"%s\", "
                           "\"root\": %d, \"time_us\": %.3f, \"algbw\": %.4f, \"busbw\": %.4f, \"wrong\": %llu, \"iters\": %llu, "
                           "\"nranks\": %d}",
                        i ? "," : "", r->op, (unsigned long long)r->size, (unsigned long long)r->count, r->redop, r->root,
                        r->time_us, r->algbw, r->busbw, (unsigned long long)r->wrong, (unsigned long long)r->iters, nranks);
            }
            fprintf(f, "\n  ]\n}\n");
            fclose(f);
        }
    }
    MPI_Barrier(MPI_COMM_WORLD);
    MPI_Finalize();
    return rc ? rc : total_wrong ? 1 : 0;
}
