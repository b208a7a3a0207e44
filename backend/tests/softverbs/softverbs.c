/*
 * softverbs: a software stand-in for libibverbs.so.1, for tests only.
 *
 * chorus loads libibverbs at run time (CHORUS_IBVERBS_LIB overrides the name). No machine of this
 * project has an RDMA NIC, so the rdma transport's verbs calls would never run. This library
 * implements the subset chorus calls, against rdma-core's own <infiniband/verbs.h> (so struct
 * layouts come from the real header, not from chorus's copy of it), with RC semantics close to
 * a NIC's:
 *
 *  - one device "softverbs0", port 1, InfiniBand link layer, LID and GID derived from the pid;
 *  - QPs are files in $SOFTVERBS_DIR (default /dev/shm/softverbs) that any process can map: the
 *    owner's pid, QP state, the LID it lives on, the PSN it expects, the QP it is connected to,
 *    and a ring of arrivals (immediate, length) the owner turns into receive completions;
 *  - RDMA WRITE [WITH IMM] copies straight into the target process (process_vm_writev, memcpy
 *    within a process) after checking the target MR's rkey, range and REMOTE_WRITE access in the
 *    owner's MR table (also a file), then publishes the arrival (release store after the data);
 *  - a write to a QP whose process died (its flock on alive-<pid> is gone), that was destroyed or
 *    is in error, that is not connected back to the sender, with a wrong PSN or LID completes
 *    with IBV_WC_RETRY_EXC_ERR (what a NIC reports after its retries), a bad rkey with
 *    IBV_WC_REM_ACCESS_ERR; the QP goes to ERR and later work requests flush;
 *  - receive completions need a posted receive WR (an arrival without one waits, like RNR with
 *    infinite retry); send queue depth is enforced (ENOMEM), as are modify_qp attribute masks.
 *
 * Divergences: completions of a write are generated when it is posted (no wire latency), an
 * unsignaled write frees its send-queue entry at once, and an arrival ring overflow (more than
 * SV_RING arrivals not yet polled) completes with IBV_WC_RNR_RETRY_EXC_ERR.
 */
#define _GNU_SOURCE
#include <infiniband/verbs.h>
#undef ibv_reg_mr
#undef ibv_query_port

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define SV_MAGIC 0x53565150u /* "SVQP" */
#define SV_RING 4096
#define SV_MRS 4096
#define SV_DESTROYED 100u
#define SV_MAX_QPS_PER_CQ 256
#define SV_ACCESS_DMABUF (1u << 30) /* MR table flag: device memory, not writable by softverbs */

struct sv_arrival {
	_Atomic uint64_t ready; /* index + 1 once the entry is written */
	uint32_t imm;           /* as posted (network order) */
	uint32_t len;
	uint32_t src_qpn;
	uint32_t pad;
};

struct sv_qp_shared {
	uint32_t magic;
	int32_t owner_pid;
	_Atomic uint32_t state;
	uint32_t lid;
	_Atomic uint32_t rq_psn;
	_Atomic uint32_t dest_qpn;
	_Atomic uint64_t tail; /* arrivals written (by the one connected QP) */
	_Atomic uint64_t head; /* owner's consumption */
	struct sv_arrival ring[SV_RING];
};

struct sv_mr_entry {
	_Atomic uint32_t live; /* rkey while registered, 0 otherwise */
	uint32_t access;
	uint64_t addr;
	uint64_t len;
};

struct sv_cq;

struct sv_qp {
	struct ibv_qp ibv;
	struct sv_qp_shared *sh;
	struct sv_qp_shared *dest; /* mapped lazily at the first write */
	uint32_t dest_qpn, dest_lid, sq_psn, sq_sig_all;
	uint32_t max_send_wr, max_recv_wr, max_send_sge;
	uint32_t outstanding; /* send completions queued but not polled */
	uint64_t *recv_ids;   /* ring of posted receive wr_ids */
	uint64_t recv_head, recv_tail;
	char path[256];
};

struct sv_wc_slot {
	struct ibv_wc wc;
	struct sv_qp *send_qp; /* frees a send-queue entry when polled */
};

struct sv_cq {
	struct ibv_cq ibv;
	struct sv_wc_slot *q;
	size_t cap, head, tail;
	struct sv_qp *recv_qps[SV_MAX_QPS_PER_CQ];
	int n_recv_qps;
	int n_qps; /* QPs using this CQ in either role */
};

static pthread_mutex_t sv_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ibv_device sv_device;
static struct ibv_device *sv_list[2];
static int sv_alive_fd = -1;
static _Atomic uint32_t *sv_counters; /* [0] next qpn, [1] next key */
static struct sv_mr_entry *sv_my_mrs;

static const char *sv_dir(void)
{
	const char *d = getenv("SOFTVERBS_DIR");
	return d && *d ? d : "/dev/shm/softverbs";
}

static void *sv_map(const char *path, size_t len, int create)
{
	int fd = open(path, O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0600);
	if (fd < 0)
		return NULL;
	struct stat st;
	if (fstat(fd, &st) != 0 || ((size_t)st.st_size < len && ftruncate(fd, (off_t)len) != 0)) {
		close(fd);
		return NULL;
	}
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	return p == MAP_FAILED ? NULL : p;
}

/* Process-wide state on first use: the directory, the key counters, our MR table and our
 * liveness lock (held until the process exits, however it exits). */
static int sv_init(void)
{
	if (sv_counters)
		return 0;
	char path[256];
	mkdir(sv_dir(), 0700);
	snprintf(path, sizeof path, "%s/counters", sv_dir());
	_Atomic uint32_t *c = sv_map(path, 4096, 1);
	snprintf(path, sizeof path, "%s/mr-%d", sv_dir(), getpid());
	struct sv_mr_entry *mrs = sv_map(path, sizeof(struct sv_mr_entry) * SV_MRS, 1);
	snprintf(path, sizeof path, "%s/alive-%d", sv_dir(), getpid());
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (!c || !mrs || fd < 0 || flock(fd, LOCK_EX | LOCK_NB) != 0) {
		errno = EIO;
		return -1;
	}
	memset(mrs, 0, sizeof(struct sv_mr_entry) * SV_MRS);
	sv_alive_fd = fd;
	sv_my_mrs = mrs;
	sv_counters = c;
	return 0;
}

static int sv_process_alive(int pid)
{
	if (pid == getpid())
		return 1;
	char path[256];
	snprintf(path, sizeof path, "%s/alive-%d", sv_dir(), pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	int alive = flock(fd, LOCK_SH | LOCK_NB) != 0;
	close(fd);
	return alive;
}

static uint32_t sv_next(int which)
{
	uint32_t v;
	do
		v = atomic_fetch_add(&sv_counters[which], 1) & 0xffffff;
	while (v < 2);
	return v;
}

static uint16_t sv_lid(void) { return (uint16_t)(1 + getpid() % 0xfffe); }

/* ---- devices ---- */

struct ibv_device **ibv_get_device_list(int *num)
{
	pthread_mutex_lock(&sv_lock);
	if (!sv_list[0]) {
		snprintf(sv_device.name, sizeof sv_device.name, "softverbs0");
		snprintf(sv_device.dev_name, sizeof sv_device.dev_name, "uverbs0");
		sv_device.node_type = IBV_NODE_CA;
		sv_device.transport_type = IBV_TRANSPORT_IB;
		sv_list[0] = &sv_device;
	}
	pthread_mutex_unlock(&sv_lock);
	struct ibv_device **l = calloc(2, sizeof *l);
	if (!l)
		return NULL;
	l[0] = &sv_device;
	if (num)
		*num = 1;
	return l;
}

void ibv_free_device_list(struct ibv_device **list) { free(list); }

const char *ibv_get_device_name(struct ibv_device *device) { return device->name; }

static int sv_poll_cq(struct ibv_cq *cq, int n, struct ibv_wc *wc);
static int sv_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad);
static int sv_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad);

struct ibv_context *ibv_open_device(struct ibv_device *device)
{
	pthread_mutex_lock(&sv_lock);
	int rc = sv_init();
	pthread_mutex_unlock(&sv_lock);
	if (rc != 0 || device != &sv_device)
		return NULL;
	struct ibv_context *ctx = calloc(1, sizeof *ctx);
	if (!ctx)
		return NULL;
	ctx->device = device;
	ctx->cmd_fd = -1;
	ctx->async_fd = -1;
	ctx->num_comp_vectors = 1;
	ctx->ops.poll_cq = sv_poll_cq;
	ctx->ops.post_send = sv_post_send;
	ctx->ops.post_recv = sv_post_recv;
	pthread_mutex_init(&ctx->mutex, NULL);
	return ctx;
}

int ibv_close_device(struct ibv_context *ctx)
{
	free(ctx);
	return 0;
}

int ibv_query_port(struct ibv_context *ctx, uint8_t port, struct _compat_ibv_port_attr *out)
{
	(void)ctx;
	if (port != 1)
		return EINVAL;
	struct ibv_port_attr *a = (struct ibv_port_attr *)out;
	memset(a, 0, sizeof *a);
	a->state = IBV_PORT_ACTIVE;
	a->max_mtu = IBV_MTU_4096;
	a->active_mtu = IBV_MTU_4096;
	a->gid_tbl_len = 1;
	a->max_msg_sz = 1u << 31;
	a->pkey_tbl_len = 1;
	a->lid = sv_lid();
	a->sm_lid = 1;
	a->lmc = 0;
	a->max_vl_num = 1;
	a->active_width = 1;
	a->active_speed = 1;
	a->phys_state = 5;
	a->link_layer = IBV_LINK_LAYER_INFINIBAND;
	return 0;
}

int ibv_query_gid(struct ibv_context *ctx, uint8_t port, int index, union ibv_gid *gid)
{
	(void)ctx;
	if (port != 1 || index < 0 || index >= 1)
		return EINVAL;
	memset(gid, 0, sizeof *gid);
	gid->raw[0] = 0xfe;
	gid->raw[1] = 0x80;
	uint32_t pid = (uint32_t)getpid();
	memcpy(&gid->raw[12], &pid, 4);
	return 0;
}

/* ---- protection domains and memory ---- */

struct ibv_pd *ibv_alloc_pd(struct ibv_context *ctx)
{
	struct ibv_pd *pd = calloc(1, sizeof *pd);
	if (pd)
		pd->context = ctx;
	return pd;
}

int ibv_dealloc_pd(struct ibv_pd *pd)
{
	free(pd);
	return 0;
}

struct ibv_mr *ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length, int access)
{
	if ((access & (IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC)) && !(access & IBV_ACCESS_LOCAL_WRITE)) {
		errno = EINVAL; /* as the kernel rejects it */
		return NULL;
	}
	if (!addr || !length) {
		errno = EINVAL;
		return NULL;
	}
	pthread_mutex_lock(&sv_lock);
	struct ibv_mr *mr = NULL;
	for (int i = 0; i < SV_MRS; i++) {
		if (atomic_load(&sv_my_mrs[i].live))
			continue;
		mr = calloc(1, sizeof *mr);
		if (!mr)
			break;
		uint32_t key = sv_next(1);
		sv_my_mrs[i].addr = (uint64_t)(uintptr_t)addr;
		sv_my_mrs[i].len = length;
		sv_my_mrs[i].access = (uint32_t)access;
		atomic_store_explicit(&sv_my_mrs[i].live, key, memory_order_release);
		mr->context = pd->context;
		mr->pd = pd;
		mr->addr = addr;
		mr->length = length;
		mr->handle = (uint32_t)i;
		mr->lkey = key;
		mr->rkey = key;
		break;
	}
	pthread_mutex_unlock(&sv_lock);
	if (!mr)
		errno = ENOMEM;
	return mr;
}

/* Registration of device memory exported as a dma-buf (how chorus registers GPU memory). The fd
 * must be a dma-buf and [offset, offset+length) inside it; the MR covers [iova, iova+length).
 * softverbs cannot copy into such memory (it is not mapped in the process), so a write to it
 * completes with a remote access error: this checks the registration path, not GPU writes. */
struct ibv_mr *ibv_reg_dmabuf_mr(struct ibv_pd *pd, uint64_t offset, size_t length, uint64_t iova, int fd, int access)
{
	char link[256], path[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, link, sizeof link - 1);
	if (n <= 0) {
		errno = EBADF;
		return NULL;
	}
	link[n] = 0;
	struct stat st;
	if ((strncmp(link, "anon_inode:dmabuf", 17) != 0 && strncmp(link, "/dmabuf:", 8) != 0) || fstat(fd, &st) != 0 ||
	    (st.st_size > 0 && offset + length > (uint64_t)st.st_size)) {
		errno = EINVAL;
		return NULL;
	}
	struct ibv_mr *mr = ibv_reg_mr(pd, (void *)(uintptr_t)iova, length, access);
	if (mr) {
		pthread_mutex_lock(&sv_lock);
		sv_my_mrs[mr->handle].access |= SV_ACCESS_DMABUF;
		pthread_mutex_unlock(&sv_lock);
	}
	return mr;
}

int ibv_dereg_mr(struct ibv_mr *mr)
{
	pthread_mutex_lock(&sv_lock);
	atomic_store(&sv_my_mrs[mr->handle].live, 0);
	pthread_mutex_unlock(&sv_lock);
	free(mr);
	return 0;
}

/* Whether [addr, addr+len) lies in a registration with key `key` and the access bits `need`. */
static int sv_mr_allows(struct sv_mr_entry *table, uint32_t key, uint64_t addr, uint64_t len, uint32_t need)
{
	for (int i = 0; i < SV_MRS; i++) {
		struct sv_mr_entry *e = &table[i];
		if (atomic_load_explicit(&e->live, memory_order_acquire) != key)
			continue;
		return addr >= e->addr && addr + len <= e->addr + e->len && (e->access & need) == need &&
		       !(need && (e->access & SV_ACCESS_DMABUF));
	}
	return 0;
}

/* ---- completion queues ---- */

struct ibv_cq *ibv_create_cq(struct ibv_context *ctx, int cqe, void *cq_context, struct ibv_comp_channel *ch, int vec)
{
	(void)ch;
	(void)vec;
	if (cqe < 1) {
		errno = EINVAL;
		return NULL;
	}
	struct sv_cq *cq = calloc(1, sizeof *cq);
	if (!cq)
		return NULL;
	cq->cap = (size_t)cqe + 1;
	cq->q = calloc(cq->cap, sizeof *cq->q);
	if (!cq->q) {
		free(cq);
		return NULL;
	}
	cq->ibv.context = ctx;
	cq->ibv.cq_context = cq_context;
	cq->ibv.cqe = cqe;
	return &cq->ibv;
}

int ibv_destroy_cq(struct ibv_cq *c)
{
	struct sv_cq *cq = (struct sv_cq *)c;
	pthread_mutex_lock(&sv_lock);
	int busy = cq->n_qps > 0;
	pthread_mutex_unlock(&sv_lock);
	if (busy)
		return EBUSY;
	free(cq->q);
	free(cq);
	return 0;
}

/* Queues a completion; an overrun CQ is a fatal error on a NIC too, so it is reported loudly. */
static void sv_push(struct sv_cq *cq, const struct ibv_wc *wc, struct sv_qp *send_qp)
{
	if (cq->tail - cq->head >= cq->cap) {
		fprintf(stderr, "softverbs: completion queue overrun (%zu entries)\n", cq->cap);
		abort();
	}
	struct sv_wc_slot *s = &cq->q[cq->tail++ % cq->cap];
	s->wc = *wc;
	s->send_qp = send_qp;
	if (send_qp)
		send_qp->outstanding++;
}

static void sv_set_state(struct sv_qp *qp, uint32_t s)
{
	qp->ibv.state = (enum ibv_qp_state)s;
	atomic_store(&qp->sh->state, s);
}

/* Receive side of one QP: arrivals become completions while receive WRs are posted; a QP in
 * error flushes its posted receives. */
static void sv_drain_arrivals(struct sv_cq *cq, struct sv_qp *qp)
{
	if (atomic_load(&qp->sh->state) == IBV_QPS_ERR) {
		while (qp->recv_head < qp->recv_tail) {
			struct ibv_wc wc = {0};
			wc.wr_id = qp->recv_ids[qp->recv_head++ % qp->max_recv_wr];
			wc.status = IBV_WC_WR_FLUSH_ERR;
			wc.opcode = IBV_WC_RECV;
			wc.qp_num = qp->ibv.qp_num;
			sv_push(cq, &wc, NULL);
		}
		return;
	}
	while (qp->recv_head < qp->recv_tail && cq->tail - cq->head < cq->cap) {
		uint64_t h = atomic_load(&qp->sh->head);
		struct sv_arrival *a = &qp->sh->ring[h % SV_RING];
		if (atomic_load_explicit(&a->ready, memory_order_acquire) != h + 1)
			break;
		struct ibv_wc wc = {0};
		wc.wr_id = qp->recv_ids[qp->recv_head++ % qp->max_recv_wr];
		wc.status = IBV_WC_SUCCESS;
		wc.opcode = IBV_WC_RECV_RDMA_WITH_IMM;
		wc.byte_len = a->len;
		wc.imm_data = a->imm;
		wc.wc_flags = IBV_WC_WITH_IMM;
		wc.qp_num = qp->ibv.qp_num;
		wc.src_qp = a->src_qpn;
		sv_push(cq, &wc, NULL);
		atomic_store(&qp->sh->head, h + 1);
	}
}

static int sv_poll_cq(struct ibv_cq *c, int n, struct ibv_wc *out)
{
	struct sv_cq *cq = (struct sv_cq *)c;
	pthread_mutex_lock(&sv_lock);
	for (int i = 0; i < cq->n_recv_qps; i++)
		sv_drain_arrivals(cq, cq->recv_qps[i]);
	int got = 0;
	while (got < n && cq->head < cq->tail) {
		struct sv_wc_slot *s = &cq->q[cq->head++ % cq->cap];
		out[got++] = s->wc;
		if (s->send_qp)
			s->send_qp->outstanding--;
	}
	pthread_mutex_unlock(&sv_lock);
	return got;
}

/* ---- queue pairs ---- */

struct ibv_qp *ibv_create_qp(struct ibv_pd *pd, struct ibv_qp_init_attr *attr)
{
	if (attr->qp_type != IBV_QPT_RC || attr->srq || !attr->send_cq || !attr->recv_cq || attr->cap.max_send_wr == 0 ||
	    attr->cap.max_recv_wr == 0 || attr->cap.max_send_wr > 16384 || attr->cap.max_recv_wr > 16384 ||
	    attr->cap.max_send_sge > 16 || attr->cap.max_recv_sge > 16) {
		errno = EINVAL;
		return NULL;
	}
	struct sv_qp *qp = calloc(1, sizeof *qp);
	if (!qp)
		return NULL;
	qp->recv_ids = calloc(attr->cap.max_recv_wr, sizeof *qp->recv_ids);
	pthread_mutex_lock(&sv_lock);
	uint32_t qpn = sv_next(0);
	snprintf(qp->path, sizeof qp->path, "%s/qp-%u", sv_dir(), qpn);
	qp->sh = sv_map(qp->path, sizeof *qp->sh, 1);
	if (!qp->sh || !qp->recv_ids) {
		pthread_mutex_unlock(&sv_lock);
		free(qp->recv_ids);
		free(qp);
		errno = ENOMEM;
		return NULL;
	}
	memset(qp->sh, 0, sizeof *qp->sh);
	qp->sh->owner_pid = getpid();
	qp->sh->lid = sv_lid();
	qp->sh->magic = SV_MAGIC;
	qp->ibv.context = pd->context;
	qp->ibv.qp_context = attr->qp_context;
	qp->ibv.pd = pd;
	qp->ibv.send_cq = attr->send_cq;
	qp->ibv.recv_cq = attr->recv_cq;
	qp->ibv.qp_num = qpn;
	qp->ibv.qp_type = IBV_QPT_RC;
	sv_set_state(qp, IBV_QPS_RESET);
	qp->max_send_wr = attr->cap.max_send_wr;
	qp->max_recv_wr = attr->cap.max_recv_wr;
	qp->max_send_sge = attr->cap.max_send_sge ? attr->cap.max_send_sge : 1;
	qp->sq_sig_all = (uint32_t)attr->sq_sig_all;
	struct sv_cq *rcq = (struct sv_cq *)attr->recv_cq, *scq = (struct sv_cq *)attr->send_cq;
	if (rcq->n_recv_qps == SV_MAX_QPS_PER_CQ) {
		pthread_mutex_unlock(&sv_lock);
		errno = ENOMEM;
		return NULL;
	}
	rcq->recv_qps[rcq->n_recv_qps++] = qp;
	rcq->n_qps++;
	scq->n_qps++;
	pthread_mutex_unlock(&sv_lock);
	attr->cap.max_inline_data = 0;
	return &qp->ibv;
}

int ibv_destroy_qp(struct ibv_qp *q)
{
	struct sv_qp *qp = (struct sv_qp *)q;
	pthread_mutex_lock(&sv_lock);
	atomic_store(&qp->sh->state, SV_DESTROYED);
	struct sv_cq *rcq = (struct sv_cq *)q->recv_cq, *scq = (struct sv_cq *)q->send_cq;
	for (int i = 0; i < rcq->n_recv_qps; i++) {
		if (rcq->recv_qps[i] == qp) {
			rcq->recv_qps[i] = rcq->recv_qps[--rcq->n_recv_qps];
			break;
		}
	}
	/* Completions of this QP still queued no longer free anything. */
	for (size_t i = scq->head; i < scq->tail; i++)
		if (scq->q[i % scq->cap].send_qp == qp)
			scq->q[i % scq->cap].send_qp = NULL;
	rcq->n_qps--;
	scq->n_qps--;
	pthread_mutex_unlock(&sv_lock);
	unlink(qp->path);
	munmap(qp->sh, sizeof *qp->sh);
	if (qp->dest)
		munmap(qp->dest, sizeof *qp->dest);
	free(qp->recv_ids);
	free(qp);
	return 0;
}

#define SV_HAS(m, bits) (((m) & (bits)) == (bits))

int ibv_modify_qp(struct ibv_qp *q, struct ibv_qp_attr *a, int mask)
{
	struct sv_qp *qp = (struct sv_qp *)q;
	if (!(mask & IBV_QP_STATE))
		return EINVAL;
	pthread_mutex_lock(&sv_lock);
	uint32_t cur = atomic_load(&qp->sh->state);
	int rc = 0;
	switch (a->qp_state) {
	case IBV_QPS_INIT:
		if (cur != IBV_QPS_RESET || !SV_HAS(mask, IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS) || a->port_num != 1)
			rc = EINVAL;
		break;
	case IBV_QPS_RTR:
		if (cur != IBV_QPS_INIT ||
		    !SV_HAS(mask, IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC |
					IBV_QP_MIN_RNR_TIMER) ||
		    a->path_mtu < IBV_MTU_256 || a->path_mtu > IBV_MTU_4096 || a->ah_attr.dlid == 0 || a->ah_attr.port_num != 1 ||
		    a->dest_qp_num == 0 || a->dest_qp_num > 0xffffff || a->rq_psn > 0xffffff) {
			rc = EINVAL;
			break;
		}
		qp->dest_qpn = a->dest_qp_num;
		qp->dest_lid = a->ah_attr.dlid;
		atomic_store(&qp->sh->rq_psn, a->rq_psn);
		atomic_store(&qp->sh->dest_qpn, a->dest_qp_num);
		break;
	case IBV_QPS_RTS:
		if (cur != IBV_QPS_RTR ||
		    !SV_HAS(mask, IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC) ||
		    a->sq_psn > 0xffffff || a->retry_cnt > 7 || a->rnr_retry > 7) {
			rc = EINVAL;
			break;
		}
		qp->sq_psn = a->sq_psn;
		break;
	case IBV_QPS_ERR:
	case IBV_QPS_RESET:
		break;
	default:
		rc = EINVAL;
	}
	if (rc == 0)
		sv_set_state(qp, a->qp_state);
	pthread_mutex_unlock(&sv_lock);
	return rc;
}

/* The remote half of one write: where a NIC would retry and give up, or be refused. */
static enum ibv_wc_status sv_deliver(struct sv_qp *qp, struct ibv_send_wr *wr, uint32_t total)
{
	if (!qp->dest) {
		char path[256];
		snprintf(path, sizeof path, "%s/qp-%u", sv_dir(), qp->dest_qpn);
		qp->dest = sv_map(path, sizeof *qp->dest, 0);
		if (!qp->dest)
			return IBV_WC_RETRY_EXC_ERR;
	}
	struct sv_qp_shared *d = qp->dest;
	uint32_t st = atomic_load(&d->state);
	if (d->magic != SV_MAGIC || d->lid != qp->dest_lid || !sv_process_alive(d->owner_pid) ||
	    (st != IBV_QPS_INIT && st != IBV_QPS_RTR && st != IBV_QPS_RTS) ||
	    atomic_load(&d->dest_qpn) != qp->ibv.qp_num || atomic_load(&d->rq_psn) != qp->sq_psn)
		return IBV_WC_RETRY_EXC_ERR;
	if (total > 0) {
		char path[256];
		snprintf(path, sizeof path, "%s/mr-%d", sv_dir(), d->owner_pid);
		struct sv_mr_entry *mrs = d->owner_pid == getpid() ? sv_my_mrs : sv_map(path, sizeof(struct sv_mr_entry) * SV_MRS, 0);
		int ok = mrs && sv_mr_allows(mrs, wr->wr.rdma.rkey, wr->wr.rdma.remote_addr, total, IBV_ACCESS_REMOTE_WRITE);
		if (mrs && mrs != sv_my_mrs)
			munmap(mrs, sizeof(struct sv_mr_entry) * SV_MRS);
		if (!ok)
			return IBV_WC_REM_ACCESS_ERR;
		if (d->owner_pid == getpid()) {
			char *to = (char *)(uintptr_t)wr->wr.rdma.remote_addr;
			for (int i = 0; i < wr->num_sge; i++) {
				memcpy(to, (void *)(uintptr_t)wr->sg_list[i].addr, wr->sg_list[i].length);
				to += wr->sg_list[i].length;
			}
		} else {
			struct iovec local[16];
			for (int i = 0; i < wr->num_sge; i++) {
				local[i].iov_base = (void *)(uintptr_t)wr->sg_list[i].addr;
				local[i].iov_len = wr->sg_list[i].length;
			}
			struct iovec remote = {(void *)(uintptr_t)wr->wr.rdma.remote_addr, total};
			ssize_t n = process_vm_writev(d->owner_pid, local, (unsigned long)wr->num_sge, &remote, 1, 0);
			if (n != (ssize_t)total)
				return n < 0 && errno == EFAULT ? IBV_WC_REM_ACCESS_ERR : IBV_WC_RETRY_EXC_ERR;
		}
	}
	if (wr->opcode == IBV_WR_RDMA_WRITE_WITH_IMM) {
		/* One producer per ring: only the QP the owner connected to passes the checks above. */
		uint64_t idx = atomic_load(&d->tail);
		if (idx - atomic_load(&d->head) >= SV_RING)
			return IBV_WC_RNR_RETRY_EXC_ERR;
		struct sv_arrival *a = &d->ring[idx % SV_RING];
		a->imm = wr->imm_data;
		a->len = total;
		a->src_qpn = qp->ibv.qp_num;
		atomic_store_explicit(&a->ready, idx + 1, memory_order_release);
		atomic_store(&d->tail, idx + 1);
	}
	return IBV_WC_SUCCESS;
}

static int sv_post_send(struct ibv_qp *q, struct ibv_send_wr *wr, struct ibv_send_wr **bad)
{
	struct sv_qp *qp = (struct sv_qp *)q;
	struct sv_cq *scq = (struct sv_cq *)q->send_cq;
	int rc = 0;
	pthread_mutex_lock(&sv_lock);
	for (; wr; wr = wr->next) {
		uint32_t st = atomic_load(&qp->sh->state);
		if ((st != IBV_QPS_RTS && st != IBV_QPS_ERR) ||
		    (wr->opcode != IBV_WR_RDMA_WRITE && wr->opcode != IBV_WR_RDMA_WRITE_WITH_IMM) || wr->num_sge < 0 ||
		    (uint32_t)wr->num_sge > qp->max_send_sge) {
			rc = EINVAL;
			break;
		}
		if (qp->outstanding >= qp->max_send_wr) {
			rc = ENOMEM;
			break;
		}
		uint64_t total = 0;
		enum ibv_wc_status status = IBV_WC_SUCCESS;
		for (int i = 0; i < wr->num_sge; i++) {
			total += wr->sg_list[i].length;
			if (!sv_mr_allows(sv_my_mrs, wr->sg_list[i].lkey, wr->sg_list[i].addr, wr->sg_list[i].length, 0))
				status = IBV_WC_LOC_PROT_ERR;
		}
		if (st == IBV_QPS_ERR)
			status = IBV_WC_WR_FLUSH_ERR;
		else if (status == IBV_WC_SUCCESS)
			status = sv_deliver(qp, wr, (uint32_t)total);
		if (status != IBV_WC_SUCCESS && status != IBV_WC_WR_FLUSH_ERR)
			sv_set_state(qp, IBV_QPS_ERR);
		if (status != IBV_WC_SUCCESS || (wr->send_flags & IBV_SEND_SIGNALED) || qp->sq_sig_all) {
			struct ibv_wc wc = {0};
			wc.wr_id = wr->wr_id;
			wc.status = status;
			wc.opcode = IBV_WC_RDMA_WRITE;
			wc.qp_num = q->qp_num;
			wc.byte_len = (uint32_t)total;
			sv_push(scq, &wc, qp);
		}
	}
	pthread_mutex_unlock(&sv_lock);
	if (rc && bad)
		*bad = wr;
	return rc;
}

static int sv_post_recv(struct ibv_qp *q, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad)
{
	struct sv_qp *qp = (struct sv_qp *)q;
	int rc = 0;
	pthread_mutex_lock(&sv_lock);
	for (; wr; wr = wr->next) {
		uint32_t st = atomic_load(&qp->sh->state);
		if (st == IBV_QPS_RESET || st == SV_DESTROYED) {
			rc = EINVAL;
			break;
		}
		if (qp->recv_tail - qp->recv_head >= qp->max_recv_wr) {
			rc = ENOMEM;
			break;
		}
		qp->recv_ids[qp->recv_tail++ % qp->max_recv_wr] = wr->wr_id;
	}
	pthread_mutex_unlock(&sv_lock);
	if (rc && bad)
		*bad = wr;
	return rc;
}
