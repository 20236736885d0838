/* Mace engine: per-packet latency between one process's socket calls and one device.
 *
 * Compiled once per Protocol Filter. The agent prepends a generated prelude (see
 * mace_agent/codegen.py) that defines: the target (DEV_IFINDEX and NETNS_INUM, the agent's
 * network namespace; PROC_TGID and PROC_NETNS_INUM, the process's network namespace),
 * struct member offsets read from the kernel's BTF (OFF_*, SKB_SPAN_*), map sizes, the
 * counter and histogram constants, and per direction (OUT_, IN_) the required IP family and
 * transport protocol plus two functions copying the flow spec's fields out of a packet:
 * <dir>_corr() into the fixed-size packet id and <dir>_info() into the info bytes.
 *
 * No kernel struct layout from headers is used: every kernel object is read at BTF offsets.
 *
 * Egress:  sys_enter_sendto/sendmsg/sendmmsg (the thread's start time, task-local; every packet
 *          of a sendmmsg call starts when the call does), or for TCP sent by other calls
 *          (write, writev) tcp_sendmsg_locked, where TCP starts queueing the data
 *          (TCP_SEND_HOOK: kernels that have it)
 *          -> net_dev_queue in that task's context (packet id -> start time)
 *          -> net_dev_start_xmit on the device (look up, stash per CPU)
 *          -> net_dev_xmit with rc == 0 (latency).
 * Ingress: netif_receive_skb on the device (packet id -> arrival time, info)
 *          -> in the receiving thread, skb_copy_datagram_iovec (TCP, raw, ICMP: any receive
 *             call, read() and readv() too) or, for UDP, the datagram a recvfrom/recvmsg/
 *             recvmmsg call noted at its start (move to the thread's batch)
 *          -> sock_recv_length, where the socket layer returns to the call (latency per
 *             packet, at most RX_SLOTS per return); kernels without it (SOCK_RECV_HOOK 0):
 *             only inside recvfrom/recvmsg/recvmmsg, reported at their exit.
 *          TCP segments merged on the socket are followed by sequence number (tcp_take).
 * On the outer device a VXLAN packet is read from the headers it encapsulates (an overlay
 * network's pod traffic); VXLAN is 0 when no VXLAN port is configured.
 */

#define NSEC_PER_SEC 1000000000ULL
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define MSG_PEEK_ 2

struct corr_key { u8 b[CORR_BYTES]; };

/* Header positions of one packet (kernel addresses; l2 is 0 when unknown), for TCP its
 * payload length (0: unknown), and the first hdr_len bytes from the network header, read in
 * one go; l4off is the transport header's position in them. */
struct pkt {
    const u8 *l2; const u8 *l3; const u8 *l4; u32 payload;
    u32 l4off; u32 hdr_len; u32 pad;
    u8 hdr[PKT_HDR_BYTES];
};

struct tx_val { u64 ts; u32 tid; u32 pad; };
struct tx_stash {
    u64 skb; u64 dev; u64 ts; u32 tid; u32 pad;
    struct corr_key key;
    u8 info[INFO_BYTES];
};
/* next_seq: TCP, the sequence number after this segment (0: unknown) */
struct rx_val { u64 ts; u32 next_seq; u32 pad; u8 info[INFO_BYTES]; };
struct rx_batch {
    u32 active; u32 n;          /* in a hooked receive call; packets in slot[] */
    u64 sk;                     /* UDP: the socket being read */
    u32 claimed;                /* UDP: claim holds the id of the datagram the call returns next */
    u32 multi;                  /* a recvmmsg call: it may return several datagrams */
    struct corr_key claim;
    u32 resume; u32 resumable;  /* TCP: sequence number of the next segment not yet taken */
    struct rx_val slot[RX_SLOTS];
};
struct event {
    u64 ts_end; u64 latency; u32 pid; u32 tid; u8 direction; u8 pad[7];
    u8 info[INFO_BYTES];
};
struct rate_window { u64 second; u64 count; };

/* Per-call state of each thread of the process lives in task-local storage: no hashing, no
 * locks, and the kernel frees it when the thread exits. */
struct tx_call { u64 start; u32 active; u32 by_socket; };
BPF_TASK_STORAGE(tx_call, struct tx_call);
BPF_TASK_STORAGE(rx_batch, struct rx_batch);
BPF_PERCPU_ARRAY(tx_stash, struct tx_stash, 1);
BPF_PERCPU_ARRAY(counters, u64, N_COUNTERS);
BPF_PERCPU_ARRAY(hist, u64, 2 * HIST_BUCKETS);
BPF_ARRAY(control, u64, 2);            /* [CONTROL_STREAM] 0/1, [CONTROL_RATE] events/s, 0: no limit */
BPF_ARRAY(rate, struct rate_window, 1);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(wake, u64, 1);         /* events submitted on this CPU since the last wake-up */
BPF_ARRAY(last_send, u64, 1);           /* when the process last entered a send call */
BPF_ARRAY(target_dev, u64, 1);          /* the outer device's struct net_device, once seen */

/* ---- pending packets ----
 * Packets seen at one end wait for the other end in a set-associative table: PENDING_SETS
 * sets of PENDING_WAYS ways in an array, the set chosen by a hash of the packet id. An insert
 * takes an empty or expired way, else evicts the oldest packet of the set; nothing locks and
 * nothing allocates, so a flood that nobody takes costs one hash and one array lookup per
 * packet (an LRU hash map took a global lock and evicted on every insert). Ways older than
 * TTL_NS never match; user space counts them as expired (mace_agent/pending.py). A way is
 * published by writing its hash last; readers compare hash and id. */
#define PENDING_SETS ((MAP_ENTRIES + PENDING_WAYS - 1) / PENDING_WAYS)
#define CORR_WORDS (CORR_BYTES / 8)

static __always_inline u64 key_hash(const struct corr_key *key)
{
    u64 w[CORR_WORDS];
    __builtin_memcpy(w, key->b, sizeof(w));
    u64 h = 0x9e3779b97f4a7c15ULL;
#pragma unroll
    for (int i = 0; i < CORR_WORDS; i++) {
        h = (h ^ w[i]) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
    }
    return h | 1;  /* 0 marks an empty way */
}

static __always_inline int same_key(const struct corr_key *a, const struct corr_key *b)
{
    u64 x[CORR_WORDS], y[CORR_WORDS];
    __builtin_memcpy(x, a->b, sizeof(x));
    __builtin_memcpy(y, b->b, sizeof(y));
    u64 diff = 0;
#pragma unroll
    for (int i = 0; i < CORR_WORDS; i++)
        diff |= x[i] ^ y[i];
    return diff == 0;
}

/* The way and set types of a table <name> of <value_t> (whose first member is u64 ts). */
#define PENDING_TYPES(name, value_t)                                                        \
struct name##_way { u64 hash; struct corr_key key; value_t value; };                        \
struct name##_set { struct name##_way way[PENDING_WAYS]; };

/* The operations on a table <name> of <value_t>, given <name>_set_of(hash) (bcc needs map
 * lookups outside macros):
 *   <name>_find(key, now): the way holding key, not expired (0: none);
 *   <name>_insert(key, value): 0 if inserted, -1 if key is already pending. */
#define PENDING_FUNCTIONS(name, value_t)                                                    \
static __always_inline struct name##_way *name##_find(const struct corr_key *key, u64 now)  \
{                                                                                           \
    u64 hash = key_hash(key);                                                               \
    struct name##_set *set = name##_set_of(hash);                                           \
    if (!set)                                                                               \
        return 0;                                                                           \
    _Pragma("unroll")                                                                       \
    for (int i = 0; i < PENDING_WAYS; i++) {                                                \
        struct name##_way *way = &set->way[i];                                              \
        if (way->hash == hash && same_key(&way->key, key) && now - way->value.ts <= TTL_NS)  \
            return way;                                                                     \
    }                                                                                       \
    return 0;                                                                               \
}                                                                                           \
static __always_inline int name##_insert(const struct corr_key *key, const value_t *value)  \
{                                                                                           \
    u64 hash = key_hash(key);                                                               \
    struct name##_set *set = name##_set_of(hash);                                           \
    if (!set)                                                                               \
        return -1;                                                                          \
    u32 victim = 0;                                                                         \
    u64 oldest = ~0ULL;                                                                     \
    _Pragma("unroll")                                                                       \
    for (int i = 0; i < PENDING_WAYS; i++) {                                                \
        struct name##_way *way = &set->way[i];                                              \
        u64 age_key = way->hash ? way->value.ts : 0;                                        \
        if (way->hash == hash && same_key(&way->key, key)                                   \
            && value->ts - way->value.ts <= TTL_NS)                                         \
            return -1;                                                                      \
        if (age_key < oldest) {                                                             \
            oldest = age_key;                                                               \
            victim = i;                                                                     \
        }                                                                                   \
    }                                                                                       \
    struct name##_way *way = &set->way[victim & (PENDING_WAYS - 1)];                        \
    way->hash = 0;                                                                          \
    __builtin_memcpy(&way->key, key, sizeof(*key));                                         \
    __builtin_memcpy(&way->value, value, sizeof(*value));                                   \
    asm volatile("" ::: "memory");                                                          \
    way->hash = hash;                                                                       \
    return 0;                                                                               \
}

PENDING_TYPES(tx_pending, struct tx_val)
PENDING_TYPES(rx_pending, struct rx_val)
BPF_ARRAY(tx_pending, struct tx_pending_set, PENDING_SETS);
BPF_ARRAY(rx_pending, struct rx_pending_set, PENDING_SETS);

static __always_inline struct tx_pending_set *tx_pending_set_of(u64 hash)
{
    u32 index = hash % PENDING_SETS;
    return tx_pending.lookup(&index);
}

static __always_inline struct rx_pending_set *rx_pending_set_of(u64 hash)
{
    u32 index = hash % PENDING_SETS;
    return rx_pending.lookup(&index);
}

PENDING_FUNCTIONS(tx_pending, struct tx_val)
PENDING_FUNCTIONS(rx_pending, struct rx_val)

static __always_inline void count(u32 index, u64 n)
{
    u64 *value = counters.lookup(&index);
    if (value)
        *value += n;
}

static __always_inline void count_max(u32 index, u64 n)
{
    u64 *value = counters.lookup(&index);
    if (value && n > *value)
        *value = n;
}

static __always_inline u32 log2_u64(u64 v)
{
    u32 r = 0;
    if (v >> 32) { v >>= 32; r += 32; }
    if (v >> 16) { v >>= 16; r += 16; }
    if (v >> 8) { v >>= 8; r += 8; }
    if (v >> 4) { v >>= 4; r += 4; }
    if (v >> 2) { v >>= 2; r += 2; }
    if (v >> 1) { r += 1; }
    return r;
}

/* Log2 buckets, each split into HIST_SUB linear sub-buckets (see mace_agent/histogram.py). */
static __always_inline u32 bucket(u64 v)
{
    if (v < HIST_SUB)
        return v;
    u32 m = log2_u64(v);
    return HIST_SUB * (m - HIST_SUB_BITS + 1) + ((v >> (m - HIST_SUB_BITS)) & (HIST_SUB - 1));
}

static __always_inline int rate_allows(u64 now, u64 limit)
{
    u32 zero = 0;
    struct rate_window *w = rate.lookup(&zero);
    if (!limit)
        return 1;
    if (!w)
        return 0;
    u64 second = now / NSEC_PER_SEC;
    if (w->second != second) {
        w->second = second;
        w->count = 0;
    }
    __sync_fetch_and_add(&w->count, 1);
    return w->count <= limit;
}

/* One measured packet: histogram and summary always, an event when the stream is on. */
static __always_inline void record(u32 dir, u64 ts, u64 now, u32 tid, const u8 *info)
{
    u64 latency = now > ts ? now - ts : 0;
    u32 slot = dir * HIST_BUCKETS + bucket(latency);
    u64 *h = hist.lookup(&slot);
    if (h)
        *h += 1;
    u32 base = C_OUT_COUNT + dir * (C_IN_COUNT - C_OUT_COUNT);
    count(base, 1);
    count(base + 1, latency);
    count_max(base + 2, latency);
    u32 key = CONTROL_STREAM;
    u64 *on = control.lookup(&key);
    key = CONTROL_RATE;
    u64 *limit = control.lookup(&key);
    if (!on || !*on || !limit)
        return;
    if (!rate_allows(now, *limit)) {
        count(C_RATE_LIMITED, 1);
        return;
    }
    struct event *e = events.ringbuf_reserve(sizeof(struct event));
    if (!e) {
        count(C_RINGBUF_DROPPED, 1);
        return;
    }
    e->ts_end = now;
    e->latency = latency;
    e->pid = PROC_TGID;
    e->tid = tid;
    e->direction = dir;
    __builtin_memcpy(e->info, info, INFO_BYTES);
    /* Waking the reader costs microseconds per event: user space drains the ring on a timer
     * and is woken only once per WAKE_EVERY events of a CPU, long before the ring can fill. */
    u32 zero = 0;
    u64 *unsignalled = wake.lookup(&zero);
    u64 flags = BPF_RB_NO_WAKEUP;
    if (unsignalled && ++*unsignalled >= WAKE_EVERY) {
        *unsignalled = 0;
        flags = BPF_RB_FORCE_WAKEUP;
    }
    events.ringbuf_submit(e, flags);
}

/* Inode number of a device's network namespace (0 if unreadable). */
static __always_inline u32 dev_netns(const u8 *dev)
{
    u64 net = 0;
    u32 inum = 0;
    if (!dev || bpf_probe_read_kernel(&net, sizeof(net), dev + OFF_DEV_NET) || !net)
        return 0;
    if (bpf_probe_read_kernel(&inum, sizeof(inum), (const u8 *)net + OFF_NET_INUM))
        return 0;
    return inum;
}

/* Whether dev is the outer device. The first positive answer caches the device's address:
 * from then on one comparison answers for every device, with no read of kernel memory. (The
 * engine stops once the device is gone, so the address cannot come to mean another device.) */
static __always_inline int is_target_dev(const u8 *dev)
{
    u32 zero = 0;
    u64 *known = target_dev.lookup(&zero);
    if (known && *known)
        return (u64)dev == *known;
    int ifindex = 0;
    if (!dev || bpf_probe_read_kernel(&ifindex, sizeof(ifindex), dev + OFF_DEV_IFINDEX))
        return 0;
    if (ifindex != DEV_IFINDEX || dev_netns(dev) != NETNS_INUM)
        return 0;
    if (known)
        *known = (u64)dev;
    return 1;
}

/* 0 if the TCP segment carries data (p->payload: its length, 0 if unknown), -1 if not. */
static __always_inline int tcp_payload(struct pkt *p, u32 ip_total, u32 ip_header)
{
    u8 doff = 0;
    if (ip_header == 20 && p->hdr_len >= 33)
        doff = p->hdr[32];
    else if (ip_header == 40 && p->hdr_len >= 53)
        doff = p->hdr[52];
    else if (bpf_probe_read_kernel(&doff, 1, p->l4 + 12))
        return -1;
    if (!ip_total)  /* GSO packets over 64 KiB carry no length */
        return 0;
    u32 headers = ip_header + (doff >> 4) * 4;
    if (ip_total <= headers)
        return -1;
    p->payload = ip_total - headers;
    return 0;
}

/* Read the first bytes from the network header: PKT_HDR_BYTES, or at least the fixed header
 * (a packet ending close to an unmapped page). 0 on success, also when they were read before. */
static __always_inline int read_header(struct pkt *p, u32 fixed)
{
    if (p->hdr_len >= fixed)
        return 0;
    if (bpf_probe_read_kernel(p->hdr, PKT_HDR_BYTES, p->l3) == 0) {
        p->hdr_len = PKT_HDR_BYTES;
        return 0;
    }
    if (bpf_probe_read_kernel(p->hdr, fixed, p->l3) == 0) {
        p->hdr_len = fixed;
        return 0;
    }
    return -1;
}

/* Check the network header against the required family/transport and find the L4 header. */
static __always_inline int parse_l3(struct pkt *p, u16 proto, int family, int l4proto)
{
    const u8 *ip = p->hdr;
    if (proto == ETH_P_IP) {
        if (family == 6 || read_header(p, 20) || (ip[0] >> 4) != 4)
            return -1;
        if (!l4proto)
            return 0;
        if (ip[9] != l4proto || ((ip[6] & 0x1f) | ip[7]))  /* other transport, or a later fragment */
            return -1;
        u32 header = (ip[0] & 0xf) * 4;
        p->l4 = p->l3 + header;
        p->l4off = header;
        if (l4proto == IPPROTO_TCP_)
            return tcp_payload(p, ((u32)ip[2] << 8) | ip[3], header);
        return 0;
    }
    if (proto == ETH_P_IPV6) {
        if (family == 4 || read_header(p, 40) || (ip[0] >> 4) != 6)
            return -1;
        if (!l4proto)
            return 0;
        if (ip[6] != l4proto)
            return -1;
        p->l4 = p->l3 + 40;
        p->l4off = 40;
        if (l4proto == IPPROTO_TCP_)
            return tcp_payload(p, 40 + (((u32)ip[4] << 8) | ip[5]), 40);
        return 0;
    }
    return -1;
}

static __always_inline u32 be32_at(const u8 *b)
{
    return ((u32)b[0] << 24) | ((u32)b[1] << 16) | ((u32)b[2] << 8) | b[3];
}

static __always_inline void put_be32(u8 *b, u32 v)
{
    b[0] = v >> 24;
    b[1] = v >> 16;
    b[2] = v >> 8;
    b[3] = v;
}

/* Where parse_skb is called from. */
#define AT_RX_DEVICE 1  /* netif_receive_skb: skb->data is the network header, network_header unset */
#define AT_OUTER 2      /* the outer device, where a pod's packet may be VXLAN-encapsulated */

#if VXLAN
/* If the packet is VXLAN (UDP to a port VXLAN_PORT() names, the I flag set), point p->l2 and
 * p->l3 at the encapsulated Ethernet and network headers and return their EtherType (the
 * header bytes are then read again there); else return 0 and leave p as it was. */
static __always_inline u16 vxlan_inner(struct pkt *p, u16 proto)
{
    const u8 *ip = p->hdr;
    u32 h;
    if (proto == ETH_P_IP) {
        if (read_header(p, 20) || (ip[0] >> 4) != 4 || ip[9] != IPPROTO_UDP_ || ((ip[6] & 0x3f) | ip[7]))
            return 0;  /* not UDP, or a fragment */
        h = (ip[0] & 0xf) * 4;
    } else if (proto == ETH_P_IPV6) {
        if (read_header(p, 40) || (ip[0] >> 4) != 6 || ip[6] != IPPROTO_UDP_)
            return 0;
        h = 40;
    } else {
        return 0;
    }
    /* UDP (8 bytes), VXLAN (8), Ethernet (14), maybe one VLAN tag (4) */
    u8 tail[34];
    if (h == 20 && p->hdr_len >= 20 + sizeof(tail))
        __builtin_memcpy(tail, p->hdr + 20, sizeof(tail));
    else if (bpf_probe_read_kernel(tail, sizeof(tail), p->l3 + h))
        return 0;
    if (!VXLAN_PORT(((u16)tail[2] << 8) | tail[3]) || !(tail[8] & 0x08))
        return 0;
    u16 type = ((u16)tail[28] << 8) | tail[29];
    u32 inner = h + 30;
    if (type == 0x8100) {
        type = ((u16)tail[32] << 8) | tail[33];
        inner += 4;
    }
    p->l2 = p->l3 + h + 16;
    p->l3 += inner;
    p->hdr_len = 0;
    return type;
}
#endif

/* Locate the headers of an skb (at: AT_* flags). Outside netif_receive_skb network_header is
 * valid. */
static __always_inline int parse_skb(const u8 *skb, struct pkt *p, int family, int l4proto, int at)
{
    u8 span[SKB_SPAN_LEN];
    u64 head, data;
    u16 network, mac, proto_be;
    if (bpf_probe_read_kernel(span, sizeof(span), skb + SKB_SPAN_START))
        return -1;
    __builtin_memcpy(&head, span + OFF_SKB_HEAD - SKB_SPAN_START, 8);
    __builtin_memcpy(&data, span + OFF_SKB_DATA - SKB_SPAN_START, 8);
    __builtin_memcpy(&network, span + OFF_SKB_NETWORK_HEADER - SKB_SPAN_START, 2);
    __builtin_memcpy(&mac, span + OFF_SKB_MAC_HEADER - SKB_SPAN_START, 2);
    __builtin_memcpy(&proto_be, span + OFF_SKB_PROTOCOL - SKB_SPAN_START, 2);
    if (!head)
        return -1;
    p->l2 = mac == 0xffff ? 0 : (const u8 *)head + mac;
    if (at & AT_RX_DEVICE)
        p->l3 = (const u8 *)data;
    else if (network == 0xffff)
        return -1;
    else
        p->l3 = (const u8 *)head + network;
    u16 proto = (u16)((proto_be & 0xff) << 8) | (proto_be >> 8);
#if VXLAN
    if (at & AT_OUTER) {
        u16 inner = vxlan_inner(p, proto);
        if (inner)
            proto = inner;
    }
#endif
    return parse_l3(p, proto, family, l4proto);
}

/* ---- generated field copies ---- */

/* Parse an skb (at: AT_* flags) and pack the flow spec's corr fields into key (zeroed first):
 * 0 on success. */
static __always_inline int out_key(const u8 *skb, struct pkt *p, struct corr_key *key, int at)
{
    __builtin_memset(key, 0, sizeof(*key));
    return parse_skb(skb, p, OUT_FAMILY, OUT_L4PROTO, at) || out_corr(p, key->b);
}

static __always_inline int in_key(const u8 *skb, struct pkt *p, struct corr_key *key, int at)
{
    __builtin_memset(key, 0, sizeof(*key));
    return parse_skb(skb, p, IN_FAMILY, IN_L4PROTO, at) || in_corr(p, key->b);
}

/* ---- egress ---- */

/* A send starts: at a send system call's entry, or (by_socket) where TCP starts queueing the
 * data of a call that entered no hooked system call (write, writev). */
static __always_inline int tx_begin(u32 by_socket)
{
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != PROC_TGID)
        return 0;
    struct tx_call *call = tx_call.task_storage_get((void *)bpf_get_current_task_btf(), 0,
                                                    BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (!call || (by_socket && call->active))
        return 0;
    u64 now = bpf_ktime_get_ns();
    call->start = now;
    call->active = 1;
    call->by_socket = by_socket;
    u32 zero = 0;
    u64 *last = last_send.lookup(&zero);
    if (last)
        *last = now;
    return 0;
}

/* A send ends: at the system call's exit, or (by_socket) where the socket layer returns. */
static __always_inline int tx_end(u32 by_socket)
{
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != PROC_TGID)
        return 0;
    struct tx_call *call = tx_call.task_storage_get((void *)bpf_get_current_task_btf(), 0, 0);
    if (call && (!by_socket || call->by_socket))
        call->active = 0;
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_sendto) { return tx_begin(0); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg) { return tx_begin(0); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendto) { return tx_end(0); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendmsg) { return tx_end(0); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmmsg) { return tx_begin(0); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendmmsg) { return tx_end(0); }
#if TCP_SEND_HOOK
RAW_TRACEPOINT_PROBE(tcp_sendmsg_locked) { return tx_begin(1); }
RAW_TRACEPOINT_PROBE(sock_send_length) { return tx_end(1); }
#endif

RAW_TRACEPOINT_PROBE(net_dev_queue)
{
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != PROC_TGID)
        return 0;
    u32 tid = id;
    struct tx_call *call = tx_call.task_storage_get((void *)bpf_get_current_task_btf(), 0, 0);
    if (!call || !call->active)
        return 0;
    /* Softirqs run in this context may queue other packets (forwarded ones, or a reply
     * made in another namespace to the packet being sent): keep only packets made here
     * (never received on an interface) and queued on a device of the process's namespace. */
    const u8 *skb = (const u8 *)ctx->args[0];
    int iif = -1;
    u64 dev = 0;
    if (bpf_probe_read_kernel(&iif, sizeof(iif), skb + OFF_SKB_IIF) || iif)
        return 0;
    if (bpf_probe_read_kernel(&dev, sizeof(dev), skb + OFF_SKB_DEV)
        || dev_netns((const u8 *)dev) != PROC_NETNS_INUM)
        return 0;
    struct pkt p = {};
    struct corr_key key;
    if (out_key(skb, &p, &key, 0))
        return 0;
    struct tx_val value = {.ts = call->start, .tid = tid};
    /* Refused when already pending: the packet is queued again on later devices in the same
     * context, and its first queueing counts. */
    if (tx_pending_insert(&key, &value) == 0)
        count(C_OUT_INSERTED, 1);
    return 0;
}

RAW_TRACEPOINT_PROBE(net_dev_start_xmit)
{
    const u8 *skb = (const u8 *)ctx->args[0];
    const u8 *dev = (const u8 *)ctx->args[1];
    if (!is_target_dev(dev))
        return 0;
    /* Nothing can be pending unless the process sent within the expiry time: while it is idle,
     * every packet on the outer device leaves after one more lookup. */
    u32 zero = 0;
    u64 *last = last_send.lookup(&zero);
    u64 now = bpf_ktime_get_ns();
    if (!last || now - *last > TTL_NS)
        return 0;
    struct tx_stash *stash = tx_stash.lookup(&zero);
    if (!stash)
        return 0;
    stash->skb = 0;
    struct pkt p = {};
    if (out_key(skb, &p, &stash->key, AT_OUTER))
        return 0;
    struct tx_pending_way *pending = tx_pending_find(&stash->key, now);
    if (!pending)
        return 0;
    stash->ts = pending->value.ts;
    stash->tid = pending->value.tid;
    __builtin_memset(stash->info, 0, sizeof(stash->info));
    out_info(&p, stash->info);
    stash->dev = (u64)dev;
    stash->skb = (u64)skb;
    return 0;
}

/* The skb may already be consumed here (veth hands it over): only its address is compared. */
RAW_TRACEPOINT_PROBE(net_dev_xmit)
{
    u32 zero = 0;
    struct tx_stash *stash = tx_stash.lookup(&zero);
    if (!stash || !stash->skb || stash->skb != ctx->args[0] || stash->dev != ctx->args[2])
        return 0;
    stash->skb = 0;
    if ((int)ctx->args[1] != 0)  /* not NETDEV_TX_OK: the packet will be sent again */
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct tx_pending_way *pending = tx_pending_find(&stash->key, now);
    if (!pending)
        return 0;
    pending->hash = 0;
    count(C_OUT_MATCHED, 1);
    record(DIR_OUT, stash->ts, now, stash->tid, stash->info);
    return 0;
}

/* ---- ingress ---- */

RAW_TRACEPOINT_PROBE(netif_receive_skb)
{
    const u8 *skb = (const u8 *)ctx->args[0];
    u64 dev = 0;
    if (bpf_probe_read_kernel(&dev, sizeof(dev), skb + OFF_SKB_DEV) || !is_target_dev((const u8 *)dev))
        return 0;
    struct pkt p = {};
    struct corr_key key;
    if (in_key(skb, &p, &key, AT_RX_DEVICE | AT_OUTER))
        return 0;
    struct rx_val value = {};
    value.ts = bpf_ktime_get_ns();
#if TCP_SEQ_AT >= 0
    if (p.payload)
        value.next_seq = be32_at(key.b + TCP_SEQ_AT) + p.payload;
#endif
    in_info(&p, value.info);
    if (rx_pending_insert(&key, &value) == 0)
        count(C_IN_INSERTED, 1);
    else
        count(C_IN_DUPLICATE, 1);
    return 0;
}

/* The receive state of the current thread of the process (0 for other processes). */
static __always_inline struct rx_batch *rx_state(u64 flags)
{
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != PROC_TGID)
        return 0;
    return rx_batch.task_storage_get((void *)bpf_get_current_task_btf(), 0, flags);
}

/* Report the packets in the thread's batch: the socket layer is handing them to the process. */
static __always_inline void rx_flush(struct rx_batch *batch, u32 tid, u64 now)
{
    for (u32 i = 0; i < RX_SLOTS; i++) {
        if (i >= batch->n)
            break;
        record(DIR_IN, batch->slot[i].ts, now, tid, batch->slot[i].info);
    }
    batch->n = 0;
}

/* A packet handed to the process: move it from pending to the thread's batch. Returns
 * -1 if it was not pending, else its next_seq. */
static __always_inline s64 rx_take(struct rx_batch *batch, struct corr_key *key, u64 now)
{
    struct rx_pending_way *pending = rx_pending_find(key, now);
    if (!pending)
        return -1;
    s64 next = pending->value.next_seq;
    u32 n = batch->n;
    if (n < RX_SLOTS) {
        __builtin_memcpy(&batch->slot[n], &pending->value, sizeof(struct rx_val));
        batch->n = n + 1;
    } else {
        count(C_IN_BATCH_OVERFLOW, 1);
    }
    pending->hash = 0;
    count(C_IN_MATCHED, 1);
    return next;
}

#if TCP_SEQ_AT >= 0
/* TCP merges segments queued on a socket into one skb, which keeps the first one's header:
 * take every pending segment the skb carries, [seq, seq + skb->len), in sequence order by
 * each entry's next_seq; after a partial read, resume where the thread stopped. */
static __always_inline void tcp_take(struct rx_batch *batch, const u8 *skb, struct corr_key *key, u64 now)
{
    u32 len = 0;
    if (bpf_probe_read_kernel(&len, sizeof(len), skb + OFF_SKB_LEN))
        return;
    u32 seq = be32_at(key->b + TCP_SEQ_AT);
    u32 at = seq;
    for (u32 i = 0; i < TCP_CHAIN; i++) {
        put_be32(key->b + TCP_SEQ_AT, at);
        s64 next = rx_take(batch, key, now);
        if (next < 0) {
            if (i || !batch->resumable || batch->resume == seq || batch->resume - seq >= len)
                break;
            at = batch->resume;
            continue;
        }
        batch->resume = (u32)next;
        batch->resumable = next != 0;
        if (!next || (u32)next - seq >= len)
            break;
        at = (u32)next;
    }
}
#define TAKE_COPIED(batch, skb, key, now) tcp_take(batch, skb, key, now)
#else
#define TAKE_COPIED(batch, skb, key, now) rx_take(batch, key, now)
#endif

#if SOCK_RECV_HOOK
#define RX_TAKING(batch) 1                  /* in any call: reported where the socket layer returns */
#else
#define RX_TAKING(batch) ((batch)->active)  /* in hooked receive calls: reported at their exit */
#endif

/* TCP, raw and ICMP sockets copy each packet through skb_copy_datagram_iter, which fires
 * skb_copy_datagram_iovec in the receiving task, whichever call reads the socket. */
RAW_TRACEPOINT_PROBE(skb_copy_datagram_iovec)
{
    struct rx_batch *batch = rx_state(BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (!batch || !RX_TAKING(batch))
        return 0;
    struct pkt p = {};
    struct corr_key key;
    const u8 *skb = (const u8 *)ctx->args[0];
    if (in_key(skb, &p, &key, 0))
        return 0;
    TAKE_COPIED(batch, skb, &key, bpf_ktime_get_ns());
    return 0;
}

#if UDP_CLAIM
/* UDP copies linear datagrams without that tracepoint (and frees them elsewhere), so the
 * datagram a receive call will return is noted from the socket's queues instead: its head
 * when the call starts, else the first datagram queued while the thread waits
 * (sk_data_ready); sock_recv_length confirms the call returned from that socket. A recvmmsg
 * call then notes the next datagram the same way for each further message it reads. */

/* A thread waiting on an empty UDP socket, and the first datagram queued there since. */
struct udp_waiter { u32 tid; u32 claimed; struct corr_key claim; };
BPF_TABLE("hash", u64, struct udp_waiter, udp_waiters, THREAD_ENTRIES);

static __always_inline u64 read_ptr(u64 addr)
{
    u64 value = 0;
    if (addr)
        bpf_probe_read_kernel(&value, sizeof(value), (const void *)addr);
    return value;
}

/* The struct sock behind a file descriptor of the current task (garbage if the file is not
 * a socket: callers check the protocol, and sock_recv_length confirms the socket). */
static __always_inline u64 fd_to_sock(u64 fd)
{
    u64 files = read_ptr(bpf_get_current_task() + OFF_TASK_FILES);
    u64 fdt = files ? read_ptr(files + OFF_FILES_FDT) : 0;
    u32 max_fds = 0;
    if (!fdt || bpf_probe_read_kernel(&max_fds, sizeof(max_fds), (const void *)(fdt + OFF_FDTABLE_MAX_FDS))
        || fd >= max_fds)
        return 0;
    u64 fds = read_ptr(fdt + OFF_FDTABLE_FD);
    u64 file = fds ? read_ptr(fds + fd * 8) : 0;
    u64 socket = file ? read_ptr(file + OFF_FILE_PRIVATE_DATA) : 0;
    return socket ? read_ptr(socket + OFF_SOCKET_SK) : 0;
}

/* 1 if skb's packet id could be read into claim. */
static __always_inline u32 udp_claim(struct corr_key *claim, u64 skb)
{
    struct pkt p = {};
    return skb && in_key((const u8 *)skb, &p, claim, 0) == 0;
}

static __always_inline u64 queue_head(u64 sk, u32 qlen_offset, u32 next_offset)
{
    u32 qlen = 0;
    if (bpf_probe_read_kernel(&qlen, sizeof(qlen), (const void *)(sk + qlen_offset)) || !qlen)
        return 0;
    return read_ptr(sk + next_offset);
}

/* The datagram a receive call on this UDP socket would return now (0: none queued). */
static __always_inline u64 udp_head(u64 sk)
{
    u64 head = queue_head(sk, OFF_UDP_READER_QUEUE_QLEN, OFF_UDP_READER_QUEUE_NEXT);
    return head ? head : queue_head(sk, OFF_SOCK_RECEIVE_QUEUE_QLEN, OFF_SOCK_RECEIVE_QUEUE_NEXT);
}

/* Note the datagram the call will return next from UDP socket sk. */
static __always_inline void udp_expect(struct rx_batch *batch, u64 sk)
{
    u64 head = udp_head(sk);
    if (head) {  /* a datagram is waiting: no need to watch the socket */
        batch->claimed = udp_claim(&batch->claim, head);
        return;
    }
    /* Watch for the first datagram, then look again: one may have been queued in between. */
    struct udp_waiter waiter = {.tid = (u32)bpf_get_current_pid_tgid()};
    udp_waiters.update(&sk, &waiter);
    head = udp_head(sk);
    if (head) {
        batch->claimed = udp_claim(&batch->claim, head);
        udp_waiters.delete(&sk);
    }
}

static __always_inline void udp_watch(struct rx_batch *batch, u64 fd)
{
    u64 sk = fd_to_sock((u32)fd);
    u16 protocol = 0;
    if (!sk || bpf_probe_read_kernel(&protocol, sizeof(protocol), (const void *)(sk + OFF_SOCK_PROTOCOL))
        || protocol != IPPROTO_UDP_)
        return;
    batch->sk = sk;
    udp_expect(batch, sk);
}

/* Runs wherever the datagram is queued; the waiting thread picks the claim up itself. */
RAW_TRACEPOINT_PROBE(sk_data_ready)
{
    u64 sk = ctx->args[0];
    struct udp_waiter *waiter = udp_waiters.lookup(&sk);
    if (!waiter || waiter->claimed)
        return 0;
    waiter->claimed = udp_claim(&waiter->claim, read_ptr(sk + OFF_SOCK_RECEIVE_QUEUE_PREV));
    return 0;
}

/* The socket layer returned from sk (ret bytes, or an error) to the thread's UDP receive call:
 * if that is the socket the call noted a datagram on, the datagram was handed over. */
static __always_inline void udp_returned(struct rx_batch *batch, u64 sk, int ret, int flags, u32 tid,
                                         u64 now)
{
    if (!batch->claimed && batch->sk) {
        u64 watched = batch->sk;
        struct udp_waiter *waiter = udp_waiters.lookup(&watched);
        if (waiter && waiter->claimed && waiter->tid == tid) {
            __builtin_memcpy(&batch->claim, &waiter->claim, sizeof(batch->claim));
            batch->claimed = 1;
        }
        udp_waiters.delete(&watched);
    }
    if (batch->sk != sk) {
        batch->claimed = 0;
        return;
    }
    if (batch->claimed && ret >= 0 && !(flags & MSG_PEEK_))
        rx_take(batch, &batch->claim, now);
    batch->claimed = 0;
    if (batch->multi)  /* recvmmsg reads the socket again within the same call */
        udp_expect(batch, batch->sk);
}

#endif

/* The receive system calls are hooked for UDP, and on kernels without sock_recv_length, where
 * packets are taken only inside these calls and reported at their exit. */
#if UDP_CLAIM || !SOCK_RECV_HOOK
/* The call starts (multi: a recvmmsg call); for UDP, note the datagram it will return. */
static __always_inline int rx_call_begins(u64 fd, u32 multi)
{
    struct rx_batch *batch = rx_state(BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (!batch)
        return 0;
    batch->active = 1;
    batch->claimed = 0;
    batch->multi = multi;
    batch->sk = 0;
#if UDP_CLAIM
    udp_watch(batch, fd);
#endif
    return 0;
}

/* The call ends: stop watching its socket (the waiter map stays bounded by live calls) and
 * report what was taken and not yet reported. */
static __always_inline int rx_call_ends(void)
{
    struct rx_batch *batch = rx_state(0);
    if (!batch || !batch->active)
        return 0;
    batch->active = 0;
#if UDP_CLAIM
    if (batch->sk)
        udp_waiters.delete(&batch->sk);
#endif
    if (batch->n)
        rx_flush(batch, (u32)bpf_get_current_pid_tgid(), bpf_ktime_get_ns());
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg) { return rx_call_begins(args->fd, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom) { return rx_call_begins(args->fd, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmmsg) { return rx_call_begins(args->fd, 1); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvmsg) { return rx_call_ends(); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvfrom) { return rx_call_ends(); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvmmsg) { return rx_call_ends(); }
#endif

#if SOCK_RECV_HOOK
/* Every receive call of every socket ends here, with the socket, the bytes returned (or an
 * error) and the call's flags: the packets the thread took during it are measured now. */
RAW_TRACEPOINT_PROBE(sock_recv_length)
{
    struct rx_batch *batch = rx_state(0);
#if UDP_CLAIM
    if (!batch || !(batch->active | batch->n))
        return 0;
#else
    if (!batch || !batch->n)  /* most returns (a busy-polling reader's) carry nothing taken */
        return 0;
#endif
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 now = bpf_ktime_get_ns();
#if UDP_CLAIM
    if (batch->active)
        udp_returned(batch, ctx->args[0], (int)ctx->args[1], (int)ctx->args[2], tid, now);
#endif
    if (batch->n)
        rx_flush(batch, tid, now);
    return 0;
}
#endif
