/* The engine's own fork-join pool, for the kernels whose work is a range of independent items.
 *
 * Why not an OpenMP region: a region ends only when every one of its threads has arrived, so a
 * worker that another process keeps off its core holds the caller up for a scheduler slice
 * even when there is no work left for it. Here each of the job's nt threads owns a contiguous
 * share of its pieces and takes them in order (as a static split would, keeping each thread's
 * memory streams whole); a thread that runs out takes the next pieces of the others' shares.
 * The caller waits only for pieces a worker has taken: a worker that wakes late finds none left
 * (bench/bench_pool.py: beside a busy core, 0.96 of ONNX Runtime's time against 1.16 with
 * OpenMP regions, over eight models at two threads).
 *
 * An item's result must not depend on which thread runs it or on the pieces around it: then
 * results are the same for every thread count. One job runs at a time; a second caller (another
 * Python thread, or a kernel called from inside a piece) runs its range alone. The state lives
 * once per process in engine._kernels._pool; every kernel module attaches to it at import.
 */
#ifndef CE_POOL_H
#define CE_POOL_H

#include <Python.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CE_POOL_PAUSE() _mm_pause()
#else
#define CE_POOL_PAUSE() ((void)0)
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#define CE_POOL_MAX_THREADS 256
#define CE_POOL_MAX_PIECES 0xffffff
/* A worker polls for the next job this long before it sleeps: a few graph steps' worth of
 * Python between two kernels. Measured with the constant changed, SqueezeNet 1.1 at two threads
 * in one process: 20 us to 2 ms alike, sleeping at once 9% slower (a futex wake-up before each
 * kernel). */
#define CE_POOL_SPIN_NS 100000
/* Pieces per thread: enough that the others can take a late worker's share in small parts.
 * Measured with the constant changed, pointwise layers (32->192 on 28x28, 96->576 on 7x7,
 * 64->256 on 56x56) at two threads on a quiet machine: 1 to 16 alike. */
#define CE_POOL_PIECES_PER_THREAD 8

/* items [lo, hi) of a job, run by thread `thread` of its nt (0 the caller): per-thread scratch
 * is indexed by it */
typedef void (*ce_pool_fn)(void *ctx, int thread, Py_ssize_t lo, Py_ssize_t hi);

/* the job's state: generation (32 bits) | threads - 1 (8) | pieces (24) */
#define CE_POOL_GEN(s) ((uint32_t)((s) >> 32))
#define CE_POOL_NT(s) ((int)(((s) >> 24) & 0xff) + 1)
#define CE_POOL_PIECES(s) ((Py_ssize_t)((s) & CE_POOL_MAX_PIECES))

/* a thread's share: generation (32 bits) | its next piece (32), alone on its cache line */
typedef struct {
    _Atomic uint64_t next;
    char pad[56];
} ce_pool_share;

typedef struct {
    ce_pool_share share[CE_POOL_MAX_THREADS];
    _Atomic uint64_t state;
    _Atomic uint32_t ticket;      /* bumped at every job: the word sleeping workers wait on */
    _Atomic int sleepers;
    _Atomic int workers;          /* threads started */
    ce_pool_fn fn;                /* the job: written before its state, read after a claim */
    void *ctx;
    Py_ssize_t items;
    uint32_t gen;
    int openmp;                   /* jobs as static OpenMP regions (bench/bench_pool.py) */
    pthread_mutex_t busy;         /* held by the caller of the running job */
    pthread_mutex_t grow;
    char pad[64];
    _Atomic Py_ssize_t done;      /* pieces finished, on a line of its own */
} ce_pool;

static ce_pool *CE_POOL = NULL;

static inline uint64_t ce_pool_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void ce_pool_sleep(ce_pool *p, uint32_t ticket)
{
#ifdef __linux__
    syscall(SYS_futex, (uint32_t *)&p->ticket, FUTEX_WAIT_PRIVATE, ticket, NULL, NULL, 0);
#else
    struct timespec ts = {0, 50000};
    (void)p;
    (void)ticket;
    nanosleep(&ts, NULL);
#endif
}

static inline void ce_pool_wake(ce_pool *p)
{
#ifdef __linux__
    syscall(SYS_futex, (uint32_t *)&p->ticket, FUTEX_WAKE_PRIVATE, CE_POOL_MAX_THREADS, NULL,
            NULL, 0);
#else
    (void)p;
#endif
}

/* Run pieces of the job of state s as thread `thread`: its own share first, then the others'
 * in turn, until none is left or the shares are another job's. */
static inline void ce_pool_take(ce_pool *p, uint64_t s, int thread)
{
    uint32_t gen = CE_POOL_GEN(s);
    int nt = CE_POOL_NT(s);
    Py_ssize_t pieces = CE_POOL_PIECES(s), ran = 0;
    for (int k = 0; k < nt; k++) {
        int r = (thread + k) % nt;
        Py_ssize_t end = (r + 1) * pieces / nt;
        _Atomic uint64_t *next = &p->share[r].next;
        uint64_t v = atomic_load_explicit(next, memory_order_acquire);
        for (;;) {
            if ((uint32_t)(v >> 32) != gen)
                goto out;
            Py_ssize_t piece = (Py_ssize_t)(uint32_t)v;
            if (piece >= end)
                break;
            if (!atomic_compare_exchange_weak_explicit(next, &v, v + 1, memory_order_acq_rel,
                                                       memory_order_acquire))
                continue;
            /* the job cannot end, nor its fields change, before this piece is counted */
            Py_ssize_t items = p->items;
            p->fn(p->ctx, thread, piece * items / pieces, (piece + 1) * items / pieces);
            ran++;
            v = atomic_load_explicit(next, memory_order_acquire);
        }
    }
out:
    if (ran)
        atomic_fetch_add_explicit(&p->done, ran, memory_order_release);
}

static inline void *ce_pool_worker(void *arg)
{
    ce_pool *p = CE_POOL;
    int index = (int)(intptr_t)arg;               /* 1, 2, ...: the caller is thread 0 */
    uint32_t seen = CE_POOL_GEN(atomic_load(&p->state));
    for (;;) {
        uint64_t start = ce_pool_now_ns(), s;
        unsigned polls = 0;
        while (CE_POOL_GEN(s = atomic_load_explicit(&p->state, memory_order_acquire)) == seen) {
            CE_POOL_PAUSE();
            if (++polls % 64 == 0 && ce_pool_now_ns() - start > CE_POOL_SPIN_NS) {
                uint32_t t = atomic_load(&p->ticket);
                atomic_fetch_add(&p->sleepers, 1);
                if (CE_POOL_GEN(atomic_load(&p->state)) == seen)
                    ce_pool_sleep(p, t);
                atomic_fetch_sub(&p->sleepers, 1);
                start = ce_pool_now_ns();
            }
        }
        seen = CE_POOL_GEN(s);
        if (index < CE_POOL_NT(s))
            ce_pool_take(p, s, index);
    }
    return NULL;
}

/* Start workers until there are `want`; how many there are. */
static inline int ce_pool_grow(ce_pool *p, int want)
{
    int have = atomic_load(&p->workers);
    if (have >= want)
        return have;
    pthread_mutex_lock(&p->grow);
    have = atomic_load(&p->workers);
    while (have < want) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int err = pthread_create(&th, &attr, ce_pool_worker, (void *)(intptr_t)(have + 1));
        pthread_attr_destroy(&attr);
        if (err)
            break;
        have++;
        atomic_store(&p->workers, have);
    }
    pthread_mutex_unlock(&p->grow);
    return have;
}

/* fn(ctx, thread, lo, hi) over [0, items) on up to nt threads (the caller one of them), in
 * `pieces` ranges of near-equal size. */
static inline void ce_pool_run(int nt, Py_ssize_t items, Py_ssize_t pieces, ce_pool_fn fn,
                               void *ctx)
{
    ce_pool *p = CE_POOL;
    if (items <= 0)
        return;
    if (pieces > items)
        pieces = items;
    if (pieces > CE_POOL_MAX_PIECES)
        pieces = CE_POOL_MAX_PIECES;
    if (nt > pieces)
        nt = (int)pieces;
    if (nt > CE_POOL_MAX_THREADS)
        nt = CE_POOL_MAX_THREADS;
#ifdef _OPENMP
    /* for comparison only: the static split in an OpenMP region, as the kernels had it */
    if (p != NULL && p->openmp && nt > 1) {
        #pragma omp parallel num_threads(nt)
        {
            int t = omp_get_thread_num(), n = omp_get_num_threads();
            fn(ctx, t, t * items / n, (t + 1) * items / n);
        }
        return;
    }
#endif
    if (nt <= 1 || p == NULL || pthread_mutex_trylock(&p->busy) != 0) {
        fn(ctx, 0, 0, items);
        return;
    }
    int workers = ce_pool_grow(p, nt - 1);
    if (workers < nt - 1)
        nt = workers + 1;
    if (nt <= 1) {
        pthread_mutex_unlock(&p->busy);
        fn(ctx, 0, 0, items);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    p->items = items;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    uint32_t gen = ++p->gen;
    for (int r = 0; r < nt; r++)
        atomic_store_explicit(&p->share[r].next,
                              ((uint64_t)gen << 32) | (uint64_t)(r * pieces / nt),
                              memory_order_relaxed);
    uint64_t s = ((uint64_t)gen << 32) | ((uint64_t)(nt - 1) << 24) | (uint64_t)pieces;
    atomic_store(&p->state, s);
    atomic_fetch_add(&p->ticket, 1);
    if (atomic_load(&p->sleepers) > 0)
        ce_pool_wake(p);
    ce_pool_take(p, s, 0);
    while (atomic_load_explicit(&p->done, memory_order_acquire) < pieces)
        CE_POOL_PAUSE();
    pthread_mutex_unlock(&p->busy);
}

/* ce_pool_run with CE_POOL_PIECES_PER_THREAD pieces a thread; at one thread fn runs directly. */
static inline void ce_pool_for(int nt, Py_ssize_t items, ce_pool_fn fn, void *ctx)
{
    ce_pool_run(nt, items, (Py_ssize_t)nt * CE_POOL_PIECES_PER_THREAD, fn, ctx);
}

static inline void ce_pool_init(ce_pool *p)
{
    memset(p, 0, sizeof(*p));
    pthread_mutex_init(&p->busy, NULL);
    pthread_mutex_init(&p->grow, NULL);
}

/* A forked child has none of the parent's workers, and perhaps a job's lock taken by a thread
 * it does not have: it starts over with an empty pool. */
static inline void ce_pool_after_fork(void)
{
    if (CE_POOL != NULL)
        ce_pool_init(CE_POOL);
}

#define CE_POOL_CAPSULE "engine._kernels._pool.POOL"

/* engine._kernels._pool's POOL: the process's one pool. */
static inline PyObject *ce_pool_capsule(void)
{
    static ce_pool pool;
    ce_pool_init(&pool);
    CE_POOL = &pool;
    pthread_atfork(NULL, NULL, ce_pool_after_fork);
    return PyCapsule_New(&pool, CE_POOL_CAPSULE, NULL);
}

/* A kernel module's link to the pool, made at its import; -1 with an exception set if the
 * pool module cannot be imported. */
static inline int ce_pool_attach(void)
{
    PyObject *m = PyImport_ImportModule("engine._kernels._pool");
    if (m == NULL)
        return -1;
    PyObject *cap = PyObject_GetAttrString(m, "POOL");
    Py_DECREF(m);
    if (cap == NULL)
        return -1;
    CE_POOL = (ce_pool *)PyCapsule_GetPointer(cap, CE_POOL_CAPSULE);
    Py_DECREF(cap);
    return CE_POOL == NULL ? -1 : 0;
}

#endif
