/* Mace engine: per-packet latency between the socket calls of measured processes and their
 * outer devices, for every probe of a node at once.
 *
 * Compiled and attached once per agent. Probes are data in maps, never code:
 *   targets   cgroup id (or TGID_KEY | tgid) -> the target's probes, grouped per direction by
 *             (flow layout, device): "is this a target?" is one lookup
 *   devices   ifindex (agent's namespace) -> the device's slot and the flow layouts used on it
 *   layouts   flow layout id -> a flow spec as gather pieces (mace_agent/flows.py)
 *   probes, probe_stats, hist, rate: per probe slot: settings, counters (per CPU), histograms,
 *             event budget
 * The prelude (mace_agent/program.py) defines the shared structs (mace_agent/layout.py), struct
 * member offsets read from the kernel's BTF (OFF_*, SKB_SPAN_*), sizes and the kernel's optional
 * hooks. No kernel struct layout from headers is used: kernel objects are read at BTF offsets.
 *
 * Egress:  sys_enter_sendto/sendmsg/sendmmsg (the thread's start time, task-local), or for TCP
 *          sent by other calls (write, writev) tcp_sendmsg_locked (TCP_SEND_HOOK)
 *          -> net_dev_queue in that task's context: per group of the target, packet id ->
 *             start time and the group's probes
 *          -> net_dev_start_xmit on an outer device: per flow layout used there, look up; stash
 *             the hits per CPU -> net_dev_xmit with rc == 0: one report per probe of each hit.
 * Ingress: netif_receive_skb on an outer device: per flow layout used there, packet id ->
 *          arrival time and info
 *          -> in a receiving thread of a target, skb_copy_datagram_iovec (TCP, raw, ICMP: any
 *             receive call) or, for UDP, the socket's note whose first bytes are in the buffer of
 *             the recvfrom/recvmsg/recvmmsg call (udp_notes): per group of the target, move to the
 *             thread's batch
 *          -> sock_recv_length, where the socket layer returns to the call: one report per
 *             probe of each packet taken (kernels without it: only inside recvfrom/recvmsg/
 *             recvmmsg, reported at their exit; UDP is then not measured).
 * Per packet on an outer device the work is one device lookup, one parse and, per flow layout
 * in use on that device (at most DEV_LAYOUTS), one gather and one table probe: it does not
 * depend on the number of probes.
 */

#define NSEC_PER_SEC 1000000000ULL
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define AF_INET_ 2
#define AF_INET6_ 10
#define MSG_PEEK_ 2
enum { RECV_FROM, RECV_MSG, RECV_MMSG };  /* rx_batch.kind */
#define MSGHDR_IOV 16       /* offsetof(struct user_msghdr, msg_iov) */
#define MMSGHDR_SIZE 64     /* sizeof(struct mmsghdr) */
#define BIT_WORDS ((1 << TARGET_BITS_LOG2) / 64)  /* words of a bit array indexed by bit_of */
#define L3_BYTES (PKT_BYTES - L2_BYTES - 16)  /* the last 16 bytes stay zero */
#define STASH_HITS 4
#define CORR_WORDS (CORR_BYTES / 8)
#define SEND_GRAIN_NS 1000000ULL  /* last_send's resolution */
#define INFO_WORDS (INFO_BYTES / 8)

/* A parsed packet: kernel addresses of its headers, its family and transport, and its header
 * bytes (b[0..L2_BYTES) the Ethernet header when has_l2, then from the network header; valid up
 * to b_len). l4off: the transport header's position from the network header. corr and info: the
 * words being gathered for one flow layout. */
struct pkt {
    const u8 *l2; const u8 *l3;
    u32 l4off; u32 payload;     /* TCP: its payload length (0: unknown) */
    u32 b_len; u8 family; u8 proto; u8 has_l2; u8 no_data;  /* no_data: a TCP segment without payload */
    u8 b[PKT_BYTES];
    u64 corr[CORR_WORDS];
    u64 info[INFO_WORDS];
};

struct probe_hist { u64 b[2 * HIST_BUCKETS]; };
/* A pending packet found at an outer device's start_xmit: its way (hash, ts, way) is taken at
 * net_dev_xmit without hashing its id again. */
struct tx_hit { struct tx_val value; u64 ts; u64 hash; u32 way; u32 pad; u8 info[INFO_BYTES]; };
struct tx_stash { u64 skb; u64 dev; u32 n; u32 pad; struct tx_hit hit[STASH_HITS]; };
struct rx_slot { u64 ts; u16 slot; u16 pad[3]; u8 info[INFO_BYTES]; };
/* A thread's copy of its target's entry, found under key; current while the target filter's
 * generation (which changes whenever targets change) is the one copied under. */
struct target_copy { struct target target; u64 key, generation; };
struct rx_batch {
    u32 active; u32 n;          /* in a hooked receive call; packets in slot[] */
    u64 sk;                     /* UDP: the socket being read */
    u64 ubuf; u64 ucap;         /* UDP: the call's buffer and size (recvfrom), or msghdr or mmsghdr vector */
    u32 kind; u32 index;        /* UDP: RECV_FROM, RECV_MSG or RECV_MMSG; datagrams returned so far */
    u32 counted; u32 pad;                 /* counted in call_gates[RX_GATE] (active or n) */
    s64 sock_fd; u64 sock;                /* the last fd a hooked call read, its struct sock */
    u32 sock_udp; u32 pad2;               /* and whether that is a UDP socket */
    u32 resume[TARGET_GROUPS];  /* TCP, per group: sequence number of the next segment not yet taken */
    u32 resumable[TARGET_GROUPS];
    struct target_copy own;     /* the receiver's target */
    struct rx_slot slot[RX_SLOTS];
};
struct tx_call {
    u64 start; u32 active; u32 by_socket; u32 counted; u32 pad;
    struct target_copy own;     /* the sender's target: net_dev_queue looks nothing up */
    u64 dev_inside, dev_outside;  /* the last devices found in and outside the target's namespace */
};

BPF_HASH(targets, u64, struct target, MAX_TARGETS);
BPF_HASH(devices, u32, struct device, MAX_DEVICES);
BPF_ARRAY(known_devices, struct known_devices, 1);
BPF_ARRAY(layouts, struct flow_layout, MAX_LAYOUTS);
BPF_ARRAY(probes, struct probe, PROBE_SLOTS);
BPF_PERCPU_ARRAY(probe_stats, struct probe_stats, PROBE_SLOTS);  /* per CPU: no atomic adds per packet */
BPF_ARRAY(hist, struct probe_hist, PROBE_SLOTS);
BPF_ARRAY(rate, struct rate_window, PROBE_SLOTS);
BPF_PERCPU_ARRAY(group_stats, struct group_stats, MAX_DEVICES * MAX_LAYOUTS);
BPF_ARRAY(target_filter, struct target_filter, 1);
BPF_ARRAY(last_send, u64, 1);           /* when a target last entered a send call (to SEND_GRAIN_NS) */
/* Ingress admission (see rx_admitted): the ports of the targets' sockets, a bit per TCP then per
 * UDP port (layout.port_bit), and the addresses of the agent's network namespace. */
BPF_ARRAY(rx_ports, u64, PORT_WORDS);
BPF_HASH(node_addresses, struct node_address, u8, NODE_ADDRESSES);
BPF_ARRAY(node_address_bits, u64, BIT_WORDS);  /* layout.node_address_bit of each */
/* Target threads inside a send call (TX_GATE), and with receive state to report (RX_GATE), counted
 * in all and per slot of their thread ids (layout.CallGateC). The hooks after a call's start (its
 * exit, net_dev_queue, sock_send_length, sock_recv_length) look up a thread's call state only if
 * its slot counts a thread: while no target thread is counted, after one array read; else after
 * reading the thread's id. A target blocked in a receive call keeps its own slot open, not all. */
enum { TX_GATE, RX_GATE, N_GATES };
BPF_ARRAY(call_gates, struct call_gate, N_GATES);
BPF_TASK_STORAGE(tx_call, struct tx_call);
BPF_TASK_STORAGE(rx_batch, struct rx_batch);
BPF_PERCPU_ARRAY(tx_stash, struct tx_stash, 1);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(wake, u64, 1);         /* events submitted on this CPU since the last wake-up */

/* The parsed packet lives in a per-CPU entry of its own for each program (the stack is too small
 * for it): a program never runs nested in itself on one CPU (the kernel skips such runs), while
 * different programs may interrupt each other. */
enum { AT_QUEUE, AT_START_XMIT, AT_RECEIVE, AT_COPY, AT_RECV_CALL, AT_DATA_READY, AT_RECV_RETURN, N_SCRATCH };
BPF_PERCPU_ARRAY(scratch, struct pkt, N_SCRATCH);

/* The packet buffer of program `which` on this CPU, zeroed up to the gathered words (which
 * each gather zeroes itself). */
static __always_inline struct pkt *pkt_buffer(u32 which)
{
    struct pkt *p = scratch.lookup(&which);
    if (p)
        __builtin_memset(p, 0, __builtin_offsetof(struct pkt, corr));
    return p;
}

/* ---- pending packets ----
 * Packets seen at one end wait for the other end in a set-associative table: PENDING_SETS
 * sets of PENDING_WAYS ways in an array, the set chosen by a hash of the packet id (which
 * starts with its flow layout and device). An insert takes an empty or expired way, else
 * evicts the oldest packet of the set; nothing locks and nothing allocates. Ways older than
 * TTL_NS never match; user space counts them as expired (mace_agent/pending.py). A set keeps its
 * ways' hashes and times in its first cache line (layout.TxSetC): an insert, and a lookup that
 * misses, read that line alone. A way is published by writing its hash last; readers compare
 * hash, time and id. */
#define PENDING_SETS ((MAP_ENTRIES + PENDING_WAYS - 1) / PENDING_WAYS)
#define KEY_WORDS (sizeof(struct corr_key) / 8)

static __always_inline u64 key_word(const struct corr_key *key, u32 i)
{
    u64 w;
    __builtin_memcpy(&w, (const u8 *)key + 8 * i, 8);
    return w;
}

static __always_inline u64 key_hash(const struct corr_key *key)
{
    u64 h = 0x9e3779b97f4a7c15ULL;
#pragma unroll
    for (u32 i = 0; i < KEY_WORDS; i++) {
        h = (h ^ key_word(key, i)) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
    }
    return h | 1;  /* 0 marks an empty way */
}

static __always_inline int same_key(const struct corr_key *a, const struct corr_key *b)
{
    u64 diff = 0;
#pragma unroll
    for (u32 i = 0; i < KEY_WORDS; i++)
        diff |= key_word(a, i) ^ key_word(b, i);
    return diff == 0;
}

/* <name>_find(key, now, &set): the way of *set holding key, not expired (-1: none);
 * <name>_insert(key, value, ts): 0 if inserted, -1 if key is already pending.
 * (set_t: layout.TxSetC or RxSetC; a way's time is the set's ts[way].) */
#define PENDING_FUNCTIONS(name, set_t, value_t)                                             \
static __always_inline int name##_find(const struct corr_key *key, u64 now, set_t **found)  \
{                                                                                           \
    u64 hash = key_hash(key);                                                               \
    set_t *set = name##_set_of(hash);                                                       \
    if (!set)                                                                               \
        return -1;                                                                          \
    _Pragma("unroll")                                                                       \
    for (int i = 0; i < PENDING_WAYS; i++) {                                                \
        if (set->hash[i] == hash && now - set->ts[i] <= TTL_NS                              \
            && same_key(&set->way[i].key, key)) {                                           \
            *found = set;                                                                   \
            return i;                                                                       \
        }                                                                                   \
    }                                                                                       \
    return -1;                                                                              \
}                                                                                           \
static __always_inline int name##_insert(const struct corr_key *key, const value_t *value, \
                                         u64 ts)                                            \
{                                                                                           \
    u64 hash = key_hash(key);                                                               \
    set_t *set = name##_set_of(hash);                                                       \
    if (!set)                                                                               \
        return -1;                                                                          \
    u32 victim = 0;                                                                         \
    u64 oldest = ~0ULL;                                                                     \
    _Pragma("unroll")                                                                       \
    for (int i = 0; i < PENDING_WAYS; i++) {                                                \
        u64 age_key = set->hash[i] ? set->ts[i] : 0;                                        \
        if (set->hash[i] == hash && ts - set->ts[i] <= TTL_NS                               \
            && same_key(&set->way[i].key, key))                                             \
            return -1;                                                                      \
        if (age_key < oldest) {                                                             \
            oldest = age_key;                                                               \
            victim = i;                                                                     \
        }                                                                                   \
    }                                                                                       \
    victim &= PENDING_WAYS - 1;                                                             \
    set->hash[victim] = 0;                                                                  \
    __builtin_memcpy(&set->way[victim].key, key, sizeof(*key));                             \
    __builtin_memcpy(&set->way[victim].value, value, sizeof(*value));                       \
    set->ts[victim] = ts;                                                                   \
    asm volatile("" ::: "memory");                                                          \
    set->hash[victim] = hash;                                                               \
    return 0;                                                                               \
}

BPF_ARRAY(tx_pending, struct tx_set, PENDING_SETS);
BPF_ARRAY(rx_pending, struct rx_set, PENDING_SETS);

static __always_inline struct tx_set *tx_pending_set_of(u64 hash)
{
    u32 index = hash % PENDING_SETS;
    return tx_pending.lookup(&index);
}

static __always_inline struct rx_set *rx_pending_set_of(u64 hash)
{
    u32 index = hash % PENDING_SETS;
    return rx_pending.lookup(&index);
}

PENDING_FUNCTIONS(tx_pending, struct tx_set, struct tx_val)
PENDING_FUNCTIONS(rx_pending, struct rx_set, struct rx_val)

/* ---- call gates ---- */

/* The current thread's slot of gate g. */
static __always_inline u32 *gate_slot(struct call_gate *g)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    return &g->n[((tid * GATE_HASH) >> (32 - GATE_SLOTS_LOG2)) & ((1 << GATE_SLOTS_LOG2) - 1)];
}

/* Whether a target thread in the current thread's slot is inside a call (for gate): else the
 * current thread has no call state to look up. While no target thread is, one array read. */
static __always_inline int gate_open(u32 gate)
{
    struct call_gate *g = call_gates.lookup(&gate);
    return g && g->total && *gate_slot(g);
}

/* Count the current thread in or out of a gate as its state becomes busy or idle (*counted:
 * whether it is counted now). */
static __always_inline void gate_count(u32 gate, u32 *counted, u32 busy)
{
    if (*counted == busy)
        return;
    *counted = busy;
    struct call_gate *g = call_gates.lookup(&gate);
    if (!g)
        return;
    u32 step = busy ? 1 : -1;
    __sync_fetch_and_add(&g->total, step);
    __sync_fetch_and_add(gate_slot(g), step);
}

/* ---- counters, histograms, events ---- */

static __always_inline void probe_count(u32 probe, u32 index, u64 n)
{
    struct probe_stats *s = probe_stats.lookup(&probe);
    if (s && index < N_PROBE_COUNTERS)
        s->c[index] += n;
}

static __always_inline void group_count(u32 dev, u32 layout, u32 index)
{
    u32 at = dev * MAX_LAYOUTS + layout;
    struct group_stats *s = group_stats.lookup(&at);
    if (s && index < N_GROUP_COUNTERS)
        s->c[index] += 1;
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

static __always_inline int rate_allows(u32 probe, u64 now, u64 limit)
{
    if (!limit)
        return 1;
    struct rate_window *w = rate.lookup(&probe);
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

/* One measured packet for one probe: histogram and summary always, an event when its stream is on. */
static __always_inline void record(u32 probe, u32 dir, u64 ts, u64 now, u32 pid, u32 tid, const u8 *info)
{
    u64 latency = now > ts ? now - ts : 0;
    struct probe_hist *h = hist.lookup(&probe);
    u32 slot = dir * HIST_BUCKETS + bucket(latency);
    if (h && slot < 2 * HIST_BUCKETS)
        __sync_fetch_and_add(&h->b[slot], 1);
    struct probe_stats *s = probe_stats.lookup(&probe);
    if (s) {
        u32 base = dir ? C_IN_COUNT : C_OUT_COUNT;
        s->c[base] += 1;
        s->c[base + 1] += latency;
        if (latency > s->c[base + 2])
            s->c[base + 2] = latency;
    }
    struct probe *settings = probes.lookup(&probe);
    if (!settings || !settings->stream)
        return;
    if (!rate_allows(probe, now, settings->rate_limit)) {
        probe_count(probe, C_RATE_LIMITED, 1);
        return;
    }
    struct event *e = events.ringbuf_reserve(sizeof(struct event));
    if (!e) {
        probe_count(probe, C_RINGBUF_DROPPED, 1);
        return;
    }
    e->ts_end = now;
    e->latency = latency;
    e->pid = pid;
    e->tid = tid;
    e->probe = probe;
    e->direction = dir;
    __builtin_memcpy(e->info, info, INFO_BYTES);
    /* Waking the reader costs microseconds per event: user space drains the ring on a timer
     * and is woken only once per WAKE_EVERY events of a CPU, long before the ring can fill. */
    u32 zero = 0;
    u64 *unsignalled = wake.lookup(&zero);
    u64 flags_ = BPF_RB_NO_WAKEUP;
    if (unsignalled && ++*unsignalled >= WAKE_EVERY) {
        *unsignalled = 0;
        flags_ = BPF_RB_FORCE_WAKEUP;
    }
    events.ringbuf_submit(e, flags_);
}

/* ---- targets and devices ---- */

/* The word index, and in *mask the bit, of key in an array of BIT_WORDS words (layout.target_bit):
 * the target filter, the node's addresses, the UDP sockets with notes. */
static __always_inline u32 bit_of(u64 key, u64 *mask)
{
    u32 bit = (key * TARGET_HASH) >> (64 - TARGET_BITS_LOG2);
    *mask = 1ULL << (bit & 63);
    return (bit >> 6) & (BIT_WORDS - 1);
}

/* Set bit in *word unless it is set (atomically: programs on other CPUs may set others). */
static __always_inline void mark_bit(u64 *word, u64 bit)
{
    if (word && !(*word & bit))
        __sync_fetch_and_or(word, bit);
}

/* Whether key may be a target (target_filter's bit for it is set). */
static __always_inline int maybe_target(const struct target_filter *filter, u64 key)
{
    u64 mask;
    u32 word = bit_of(key, &mask);
    return (filter->bits[word] & mask) != 0;
}

/* The key the current task may be a target under (*filter: the target filter): its cgroup id when
 * some targets are cgroups and that id's filter bit is set, else TGID_KEY | its TGID when some are
 * processes and that bit is set; 0 for everybody else, without a hash lookup. */
static __always_inline u64 first_key(const struct target_filter **filter)
{
    u32 zero = 0;
    const struct target_filter *f = target_filter.lookup(&zero);
    *filter = f;
    if (!f)
        return 0;
    u64 key = f->cgroups ? bpf_get_current_cgroup_id() : 0;
    if (!key || !maybe_target(f, key))
        key = f->processes ? TGID_KEY | (bpf_get_current_pid_tgid() >> 32) : 0;
    return key && maybe_target(f, key) ? key : 0;
}

/* The target of the current task, whose first key is *key (not 0); *key becomes the key it was
 * found under: a cgroup id whose bit collided with a target's falls back to the task's process. */
static __always_inline struct target *find_target(const struct target_filter *filter, u64 *key)
{
    struct target *t = targets.lookup(key);
    if (t || (*key & TGID_KEY) || !filter->processes)
        return t;
    *key = TGID_KEY | (bpf_get_current_pid_tgid() >> 32);
    return maybe_target(filter, *key) ? targets.lookup(key) : 0;
}

/* Whether a thread's copy is its target under key now. Most calls of a target then look nothing up
 * (a task whose first key is not the one its target was found under, after a filter bit collision,
 * always looks up). */
static __always_inline int copy_current(const struct target_copy *copy, const struct target_filter *filter,
                                        u64 key)
{
    return copy->key == key && copy->generation == filter->generation;
}

/* Copy t, found under key, into a thread's copy. */
static __always_inline void copy_target(struct target_copy *copy, const struct target *t, u64 key,
                                        const struct target_filter *filter)
{
    __builtin_memcpy(&copy->target, t, sizeof(*t));
    copy->key = key;
    copy->generation = filter->generation;
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

/* Copy the outer device entry of dev to *out (0: dev is not an outer device). Its struct
 * net_device's address is remembered once its namespace was checked: later packets need no
 * namespace read, and once the engine has copied every outer device's address and entry into
 * known_devices, every device is found or told apart by address alone. (The agent removes an
 * entry once its device is gone, so the address cannot come to mean another one.) */
static __always_inline int outer_dev(const u8 *dev, struct device *out)
{
    if (!dev)
        return 0;
    u32 zero = 0;
    const struct known_devices *known = known_devices.lookup(&zero);
    if (known && known->ready) {  /* every outer device's address is known: compare addresses */
        u32 i = 0;
        for (; i < KNOWN_DEVICES; i++) {
            if (i >= known->n)
                return 0;
            if (known->dev[i] == (u64)dev)
                break;
        }
        if (i == KNOWN_DEVICES)
            return 0;
        __builtin_memcpy(out, &known->entry[i & (KNOWN_DEVICES - 1)], sizeof(*out));
        return 1;
    }
    u32 ifindex = 0;
    if (bpf_probe_read_kernel(&ifindex, sizeof(ifindex), dev + OFF_DEV_IFINDEX))
        return 0;
    struct device *d = devices.lookup(&ifindex);
    if (!d)
        return 0;
    if (d->seen != (u64)dev) {
        if (dev_netns(dev) != d->netns)
            return 0;
        d->seen = (u64)dev;
    }
    __builtin_memcpy(out, d, sizeof(*out));
    return 1;
}

/* ---- parsing ---- */

static __always_inline u32 be32_at(const u8 *b)
{
    return ((u32)b[0] << 24) | ((u32)b[1] << 16) | ((u32)b[2] << 8) | b[3];
}

/* Read the header bytes from the network header: L3_BYTES, or at least the fixed header (a
 * packet ending close to an unmapped page). */
static __always_inline int read_l3(struct pkt *p)
{
    if (bpf_probe_read_kernel(p->b + L2_BYTES, L3_BYTES, p->l3) == 0) {
        p->b_len = L2_BYTES + L3_BYTES;
        return 0;
    }
    if (bpf_probe_read_kernel(p->b + L2_BYTES, 40, p->l3) == 0) {
        p->b_len = L2_BYTES + 40;
        return 0;
    }
    if (bpf_probe_read_kernel(p->b + L2_BYTES, 20, p->l3) == 0) {
        p->b_len = L2_BYTES + 20;
        return 0;
    }
    return -1;
}

/* The transport header's position and, for TCP, the payload length; the transport bytes are
 * read on their own if the first read did not reach them. */
static __always_inline void parse_l4(struct pkt *p, u32 ip_total)
{
    if (p->l4off + 16 > L3_BYTES)
        return;
    if (L2_BYTES + p->l4off + 16 > p->b_len) {
        if (bpf_probe_read_kernel(p->b + L2_BYTES + p->l4off, 16, p->l3 + p->l4off))
            return;
        p->b_len = L2_BYTES + p->l4off + 16;
    }
    if (p->proto != IPPROTO_TCP_ || !ip_total)  /* GSO packets over 64 KiB carry no length */
        return;
    u8 doff = p->b[(L2_BYTES + p->l4off + 12) & (PKT_BYTES - 1)];
    u32 headers = p->l4off + (doff >> 4) * 4;
    if (ip_total > headers)
        p->payload = ip_total - headers;
    else
        p->no_data = 1;
}

/* Family, transport and transport header of the packet at p->l3 (EtherType proto). */
static __always_inline int parse_l3(struct pkt *p, u16 proto)
{
    if (read_l3(p))
        return -1;
    const u8 *ip = p->b + L2_BYTES;
    u32 total;
    if (proto == ETH_P_IP && (ip[0] >> 4) == 4) {
        p->family = 4;
        if ((ip[6] & 0x1f) | ip[7])  /* a later fragment: no transport header */
            return 0;
        p->proto = ip[9];
        p->l4off = (ip[0] & 0xf) * 4;
        total = ((u32)ip[2] << 8) | ip[3];
    } else if (proto == ETH_P_IPV6 && (ip[0] >> 4) == 6) {
        p->family = 6;
        p->proto = ip[6];
        p->l4off = 40;
        total = 40 + (((u32)ip[4] << 8) | ip[5]);
    } else {
        return -1;
    }
    parse_l4(p, total);
    return 0;
}

/* Where parse_skb is called from. */
#define AT_RX_DEVICE 1  /* netif_receive_skb: skb->data is the network header, network_header unset */
#define AT_OUTER 2      /* an outer device, where a pod's packet may be VXLAN-encapsulated */
#define AT_L2 4         /* a flow layout takes Ethernet bytes: read that header too */
#define AT_LOCAL 8      /* fail (-1) unless the packet was made on this host (never received: skb_iif 0) */

/* AT_L2 if bit dir_bit (READS_L2_OUT or READS_L2_IN) is set in a device's or target's reads_l2. */
#define L2_IF(reads_l2, dir_bit) (((reads_l2) & (dir_bit)) ? AT_L2 : 0)

#if VXLAN
/* If the parsed packet is VXLAN (UDP to a port VXLAN_PORT() names, the I flag set), return the
 * EtherType of the packet it encapsulates and point p->l2 and p->l3 at its headers; else 0. */
static __always_inline u16 vxlan_inner(struct pkt *p)
{
    /* UDP (8 bytes), VXLAN (8), Ethernet (14), maybe one VLAN tag (4) */
    u32 at = L2_BYTES + p->l4off;
    if (p->proto != IPPROTO_UDP_ || at + 34 > p->b_len)
        return 0;
#define T(i) (p->b[(at + (i)) & (PKT_BYTES - 1)])
    if (!VXLAN_PORT(((u16)T(2) << 8) | T(3)) || !(T(8) & 0x08))
        return 0;
    u16 type = ((u16)T(28) << 8) | T(29);
    u32 inner = p->l4off + 30;
    if (type == 0x8100) {
        type = ((u16)T(32) << 8) | T(33);
        inner += 4;
    }
#undef T
    p->l2 = p->l3 + p->l4off + 16;
    p->l3 += inner;
    return type;
}
#endif

/* Locate and read the headers of an skb (at: AT_* flags). Outside netif_receive_skb
 * network_header is valid. 0 on success. */
static __always_inline int parse_skb(const u8 *skb, struct pkt *p, int at)
{
    u8 span[SKB_SPAN_LEN];
    u64 head, data;
    u16 network, mac, proto_be;
    if (bpf_probe_read_kernel(span, sizeof(span), skb + SKB_SPAN_START))
        return -1;
    if (at & AT_LOCAL) {
        s32 iif = -1;
#if SKB_SPAN_IIF
        __builtin_memcpy(&iif, span + OFF_SKB_IIF - SKB_SPAN_START, 4);
#else
        bpf_probe_read_kernel(&iif, sizeof(iif), skb + OFF_SKB_IIF);
#endif
        if (iif)
            return -1;
    }
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
    if (parse_l3(p, proto))
        return -1;
#if VXLAN
    if (at & AT_OUTER) {
        u16 inner = vxlan_inner(p);
        if (inner) {
            p->proto = p->l4off = p->payload = p->no_data = 0;
            if (parse_l3(p, inner))
                return -1;
        }
    }
#endif
    if ((at & AT_L2) && p->l2 && bpf_probe_read_kernel(p->b, 14, p->l2) == 0)
        p->has_l2 = 1;
    return 0;
}

/* ---- ingress admission ----
 * An outer device's receive inserts a packet only if a target may read it: a packet that is not
 * TCP or UDP, one to a port some target's socket has (rx_ports), one to a multicast or broadcast
 * address, or one to an address of the agent's own namespace (the node's: NAT may turn it into a
 * pod's address and port, as NodePort and hostPort do). A target's ports are learnt where it binds,
 * sends, and starts a receive call; the agent adds those of the sockets it has when a probe starts
 * (engine.py). Bits stay set until no target is left: a port set for nothing costs inserts only. */

static __always_inline u64 *port_word(u8 proto, u16 port, u64 *bit)
{
    u32 index = (proto == IPPROTO_UDP_ ? PORT_WORDS / 2 : 0) + (port >> 6);
    *bit = 1ULL << (port & 63);
    return rx_ports.lookup(&index);
}

/* A target's socket has local port port of proto. */
static __always_inline void admit_port(u8 proto, u16 port)
{
    if (proto != IPPROTO_TCP_ && proto != IPPROTO_UDP_)
        return;
    u64 bit;
    u64 *word = port_word(proto, port, &bit);
    mark_bit(word, bit);
}

/* The big-endian 16-bit field at byte at of the parsed packet's transport header (TCP and UDP: the
 * source port at 0, the destination port at 2; UDP: the length at 4). */
static __always_inline u16 l4_u16(const struct pkt *p, u32 at)
{
    u32 pos = L2_BYTES + p->l4off + at;
    return ((u16)p->b[pos & (PKT_BYTES - 1)] << 8) | p->b[(pos + 1) & (PKT_BYTES - 1)];
}

/* The transport ports of a parsed TCP or UDP packet were read (src at 0, dst at 2). */
static __always_inline int has_ports(const struct pkt *p)
{
    return (p->proto == IPPROTO_TCP_ || p->proto == IPPROTO_UDP_) && L2_BYTES + p->l4off + 4 <= p->b_len;
}

/* Whether the packet's destination is a multicast or broadcast address or one of the node's. */
static __always_inline int to_node(const struct pkt *p)
{
    const u8 *ip = p->b + L2_BYTES;
    struct node_address key = {};
    key.family = p->family;
    if (p->family == 4) {
        if (ip[16] >= 224)
            return 1;
        __builtin_memcpy(key.addr, ip + 16, 4);
    } else {
        if (ip[24] == 0xff)
            return 1;
        __builtin_memcpy(key.addr, ip + 24, 16);
    }
    u64 lo, hi;
    __builtin_memcpy(&lo, key.addr, 8);
    __builtin_memcpy(&hi, key.addr + 8, 8);
    u64 mask;
    u32 index = bit_of(key.family ^ lo ^ hi, &mask);
    u64 *word = node_address_bits.lookup(&index);
    if (!word || !(*word & mask))  /* not one of the node's: mostly ends here */
        return 0;
    return node_addresses.lookup(&key) != 0;
}

/* Whether an outer device's receive keeps the parsed packet for the targets' receive calls. */
static __always_inline int rx_admitted(const struct pkt *p)
{
    if (!has_ports(p))
        return 1;
    u64 bit;
    u64 *word = port_word(p->proto, l4_u16(p, 2), &bit);
    return !word || (*word & bit) || to_node(p);
}

/* ---- flow layouts: packing a packet's fields ---- */

static __always_inline int layout_fits(const struct flow_layout *l, const struct pkt *p)
{
    /* TCP layouts see data segments only: a pure ACK carries the next segment's sequence number */
    return (!l->family || l->family == p->family) && (!l->l4proto || (l->l4proto == p->proto && !p->no_data))
        && (!l->needs_l2 || p->has_l2);
}

/* Where a piece's first byte sits in p->b. Bytes never read are zero (struct pkt starts zeroed and
 * the reads end L3_BYTES after the network header, 16 bytes short of the buffer's end). */
static __always_inline u32 gather_pos(const struct pkt *p, u8 src)
{
    return ((src & ~L4_SOURCE) + (src >> 7) * (L2_BYTES + p->l4off)) & (PKT_BYTES - 1);
}

/* The 8 bytes of p->b from pos, the first one lowest: two aligned loads (positions in the zero
 * tail read zeros). */
static __always_inline u64 bytes_at(const struct pkt *p, u32 pos)
{
    if (pos > PKT_BYTES - 16)
        pos = PKT_BYTES - 16;
    u32 at = pos & ~7U;
    u32 shift = (pos & 7) * 8;
    u64 lo = *(const u64 *)(p->b + at);
    u64 hi = *(const u64 *)(p->b + at + 8);
    return (lo >> shift) | ((hi << 1) << (63 - shift));
}

/* words[] |= each piece's bytes of p, shifted into place and masked (mace_agent/flows.py). */
static __always_inline void gather(const struct pkt *p, const struct piece *pieces, u32 n, u32 max,
                                   u64 *words, u32 n_words)
{
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < max; i++) {
        if (i >= n)
            break;
        const struct piece *piece = &pieces[i];
        u32 w = piece->word;
        if (w < n_words)
            words[w] |= (bytes_at(p, gather_pos(p, piece->src)) << (piece->shift & 63)) & piece->mask;
    }
}

/* The packet id of p for layout l (its id and device already in key): 0 unless the transport
 * bytes it needs were not read. */
static __always_inline int gather_corr(struct pkt *p, const struct flow_layout *l, struct corr_key *key)
{
    if (l->corr_l4_end && L2_BYTES + p->l4off + l->corr_l4_end > p->b_len)
        return -1;
    __builtin_memset(p->corr, 0, sizeof(p->corr));
    gather(p, l->corr, l->n_corr, CORR_PIECES, p->corr, CORR_WORDS);
    __builtin_memcpy(key->b, p->corr, CORR_BYTES);
    return 0;
}

/* The info bytes of p for layout l (fields not in the packet are zero). */
static __always_inline void gather_info(struct pkt *p, const struct flow_layout *l, u8 *info)
{
    __builtin_memset(p->info, 0, sizeof(p->info));
    gather(p, l->info, l->n_info, INFO_PIECES, p->info, INFO_WORDS);
    __builtin_memcpy(info, p->info, INFO_BYTES);
}

/* The packet id of p for group (layout, dev): the layout, or 0 if p does not fit it. */
static __always_inline const struct flow_layout *key_for(struct pkt *p, u32 layout, u32 dev,
                                                         struct corr_key *key)
{
    const struct flow_layout *l = layouts.lookup(&layout);
    if (!l || !layout_fits(l, p))
        return 0;
    key->layout = layout;
    key->dev = dev;
    key->pad = 0;
    return gather_corr(p, l, key) ? 0 : l;
}

/* ---- egress ---- */

/* A send starts: at a send system call's entry, or (by_socket) where TCP starts queueing the
 * data of a call that entered no hooked system call (write, writev). */
static __always_inline int tx_begin(u32 by_socket)
{
    const struct target_filter *filter;
    u64 key = first_key(&filter);
    if (!key)
        return 0;
    void *task = (void *)bpf_get_current_task_btf();
    struct tx_call *call = tx_call.task_storage_get(task, 0, 0);
    if (call && by_socket && call->active)
        return 0;
    if (!call || !copy_current(&call->own, filter, key)) {
        const struct target *t = find_target(filter, &key);
        if (!t)
            return 0;
        call = tx_call.task_storage_get(task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
        if (!call)
            return 0;
        if (call->own.target.netns != t->netns)
            call->dev_inside = call->dev_outside = 0;
        copy_target(&call->own, t, key, filter);
    }
    u64 now = bpf_ktime_get_ns();
    call->start = now;
    call->active = 1;
    call->by_socket = by_socket;
    gate_count(TX_GATE, &call->counted, 1);
    u32 zero = 0;
    u64 *last = last_send.lookup(&zero);
    if (last && now - *last > SEND_GRAIN_NS)  /* a shared line: written at most once per grain */
        *last = now;
    return 0;
}

/* A send ends: at the system call's exit, or (by_socket) where the socket layer returns.
 * While no target is inside a send call, nothing is looked up. */
static __always_inline int tx_end(u32 by_socket)
{
    if (!gate_open(TX_GATE))
        return 0;
    struct tx_call *call = tx_call.task_storage_get((void *)bpf_get_current_task_btf(), 0, 0);
    if (call && (!by_socket || call->by_socket)) {
        call->active = 0;
        gate_count(TX_GATE, &call->counted, 0);
    }
    return 0;
}

/* A target binds a socket: admit its port, for TCP and UDP alike (the call does not say which). */
TRACEPOINT_PROBE(syscalls, sys_enter_bind)
{
    const struct target_filter *filter;
    u64 key = first_key(&filter);
    if (!key || !find_target(filter, &key))
        return 0;
    u16 head[2] = {};  /* sa_family, then the port of sockaddr_in and sockaddr_in6 */
    if (args->addrlen < (int)sizeof(head) || bpf_probe_read_user(head, sizeof(head), args->umyaddr)
        || (head[0] != AF_INET_ && head[0] != AF_INET6_))
        return 0;
    u16 port = (u16)(head[1] << 8) | (head[1] >> 8);
    if (port) {
        admit_port(IPPROTO_TCP_, port);
        admit_port(IPPROTO_UDP_, port);
    }
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
    if (!gate_open(TX_GATE))
        return 0;
    struct tx_call *call = tx_call.task_storage_get((void *)bpf_get_current_task_btf(), 0, 0);
    if (!call || !call->active)
        return 0;
    const struct target *t = &call->own.target;
    if (!t->n_out)
        return 0;
    /* Softirqs run in this context may queue other packets (forwarded ones, or a reply
     * made in another namespace to the packet being sent): keep only packets queued on a device
     * of the target's namespace (a packet passes them first) and made here (AT_LOCAL). */
    const u8 *skb = (const u8 *)ctx->args[0];
    u64 dev = 0;
    if (bpf_probe_read_kernel(&dev, sizeof(dev), skb + OFF_SKB_DEV) || !dev)
        return 0;
    /* A device changes namespace when it is set up (a CNI moves a veth end into the pod's), not
     * while a pod's processes send through it: the last answers stand. */
    if (dev != call->dev_inside) {
        if (dev == call->dev_outside || dev_netns((const u8 *)dev) != t->netns) {
            call->dev_outside = dev;
            return 0;
        }
        call->dev_inside = dev;
    }
    struct pkt *p = pkt_buffer(AT_QUEUE);
    if (!p || parse_skb(skb, p, AT_LOCAL | L2_IF(t->reads_l2, READS_L2_OUT)))
        return 0;
    if (has_ports(p))  /* the sending socket's port: replies to it are admitted */
        admit_port(p->proto, l4_u16(p, 0));
    u64 id = bpf_get_current_pid_tgid();
    struct tx_val value = {.pid = id >> 32, .tid = (u32)id};
    for (u32 g = 0; g < TARGET_GROUPS; g++) {
        if (g >= t->n_out)
            break;
        const struct group *group = &t->out[g];
        struct corr_key key;
        if (!key_for(p, group->layout, group->dev, &key))
            continue;
        value.slot = group->slot;
        /* Refused when already pending: the packet is queued again on later devices in the
         * same context, and its first queueing counts. */
        if (tx_pending_insert(&key, &value, call->start) == 0)
            probe_count(group->slot, C_OUT_INSERTED, 1);
    }
    return 0;
}

RAW_TRACEPOINT_PROBE(net_dev_start_xmit)
{
    const u8 *skb = (const u8 *)ctx->args[0];
    const u8 *dev = (const u8 *)ctx->args[1];
    struct device dev_entry;
    const struct device *d = &dev_entry;
    if (!outer_dev(dev, &dev_entry) || !d->n_out)
        return 0;
    /* Nothing can be pending unless a target sent within the expiry time: while targets are
     * idle, every packet on an outer device leaves after one more lookup. */
    u32 zero = 0;
    u64 *last = last_send.lookup(&zero);
    if (!last || !*last)  /* no target ever sent: not even a clock read */
        return 0;
    u64 now = bpf_ktime_get_ns();
    if (now - *last > TTL_NS + SEND_GRAIN_NS)
        return 0;
    struct tx_stash *stash = tx_stash.lookup(&zero);
    if (!stash)
        return 0;
    stash->skb = 0;
    stash->n = 0;
    struct pkt *p = pkt_buffer(AT_START_XMIT);
    if (!p || parse_skb(skb, p, AT_OUTER | L2_IF(d->reads_l2, READS_L2_OUT)))
        return 0;
    u32 n = 0;
    for (u32 i = 0; i < DEV_LAYOUTS; i++) {
        if (i >= d->n_out || n >= STASH_HITS)
            break;
        struct corr_key key;
        const struct flow_layout *l = key_for(p, d->out_layouts[i], d->slot, &key);
        if (!l)
            continue;
        struct tx_set *set;
        int way = tx_pending_find(&key, now, &set);
        if (way < 0)
            continue;
        way &= PENDING_WAYS - 1;
        struct tx_hit *hit = &stash->hit[n & (STASH_HITS - 1)];
        __builtin_memcpy(&hit->value, &set->way[way].value, sizeof(hit->value));
        hit->ts = set->ts[way];
        hit->hash = set->hash[way];
        hit->way = way;
        gather_info(p, l, hit->info);
        n++;
    }
    if (n) {
        stash->n = n;
        stash->dev = (u64)dev;
        stash->skb = (u64)skb;
    }
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
    for (u32 h = 0; h < STASH_HITS; h++) {
        if (h >= stash->n)
            break;
        struct tx_hit *hit = &stash->hit[h];
        struct tx_set *set = tx_pending_set_of(hit->hash);
        u32 way = hit->way & (PENDING_WAYS - 1);
        if (!set || set->hash[way] != hit->hash || set->ts[way] != hit->ts)  /* taken or replaced since */
            continue;
        set->hash[way] = 0;
        probe_count(hit->value.slot, C_OUT_MATCHED, 1);
        record(hit->value.slot, DIR_OUT, hit->ts, now, hit->value.pid, hit->value.tid, hit->info);
    }
    return 0;
}

/* ---- ingress ---- */

#if UDP_CLAIM
/* Per CPU, the last packet netif_receive_skb handed up (any device): a local datagram is queued on
 * its socket within that same call, so sk_data_ready finds it here. */
BPF_PERCPU_ARRAY(rx_delivering, u64, 1);
#endif

RAW_TRACEPOINT_PROBE(netif_receive_skb)
{
    const u8 *skb = (const u8 *)ctx->args[0];
#if UDP_CLAIM
    u32 zero = 0;
    u64 *delivering = rx_delivering.lookup(&zero);
    if (delivering)
        *delivering = (u64)skb;
#endif
    u64 dev = 0;
    if (bpf_probe_read_kernel(&dev, sizeof(dev), skb + OFF_SKB_DEV))
        return 0;
    struct device dev_entry;
    const struct device *d = &dev_entry;
    if (!outer_dev((const u8 *)dev, &dev_entry) || !d->n_in)
        return 0;
    struct pkt *p = pkt_buffer(AT_RECEIVE);
    if (!p || parse_skb(skb, p, AT_RX_DEVICE | AT_OUTER | L2_IF(d->reads_l2, READS_L2_IN))
        || !rx_admitted(p))
        return 0;
    struct rx_val value = {};
    u64 arrived = bpf_ktime_get_ns();
    for (u32 i = 0; i < DEV_LAYOUTS; i++) {
        if (i >= d->n_in)
            break;
        u32 layout = d->in_layouts[i];
        struct corr_key key;
        const struct flow_layout *l = key_for(p, layout, d->slot, &key);
        if (!l)
            continue;
        u32 at = l->tcp_seq_at;
        value.next_seq = 0;
        if (p->payload && at <= CORR_BYTES - 4)
            value.next_seq = be32_at(key.b + at) + p->payload;
        gather_info(p, l, value.info);
        group_count(d->slot, layout, rx_pending_insert(&key, &value, arrived) ? G_IN_DUPLICATE : G_IN_INSERTED);
    }
    return 0;
}

/* The receive state of the current thread (0 for threads that never received as a target). */
static __always_inline struct rx_batch *rx_state(u64 flags_)
{
    return rx_batch.task_storage_get((void *)bpf_get_current_task_btf(), 0, flags_);
}

/* The receive state of the current thread, made on first use, if it belongs to a target that
 * measures ingress (its copy of the target current); else 0. */
static __always_inline struct rx_batch *receiver(void)
{
    const struct target_filter *filter;
    u64 key = first_key(&filter);
    if (!key)
        return 0;
    struct rx_batch *batch = rx_state(0);
    if (!batch || !copy_current(&batch->own, filter, key)) {
        const struct target *t = find_target(filter, &key);
        if (!t || !t->n_in)
            return 0;
        batch = rx_state(BPF_LOCAL_STORAGE_GET_F_CREATE);
        if (!batch)
            return 0;
        copy_target(&batch->own, t, key, filter);
    }
    return batch->own.target.n_in ? batch : 0;
}

/* Count the thread in RX_GATE while it is in a hooked receive call or has packets to report. */
static __always_inline void rx_settle(struct rx_batch *batch)
{
    gate_count(RX_GATE, &batch->counted, batch->active || batch->n);
}

/* Report the packets in the thread's batch: the socket layer is handing them to the process. */
static __always_inline void rx_flush(struct rx_batch *batch, u64 now)
{
    u64 id = bpf_get_current_pid_tgid();
    for (u32 i = 0; i < RX_SLOTS; i++) {
        if (i >= batch->n)
            break;
        struct rx_slot *slot = &batch->slot[i];
        record(slot->slot, DIR_IN, slot->ts, now, id >> 32, (u32)id, slot->info);
    }
    batch->n = 0;
}

/* A packet handed to the thread: move it from pending to the thread's batch for the group's
 * measurement. Returns -1 if it was not pending, else its next_seq. */
static __always_inline s64 rx_take(struct rx_batch *batch, const struct corr_key *key,
                                   const struct group *group, u64 now)
{
    struct rx_set *set;
    int way = rx_pending_find(key, now, &set);
    if (way < 0)
        return -1;
    way &= PENDING_WAYS - 1;
    const struct rx_val *pending = &set->way[way].value;
    s64 next = pending->next_seq;
    u32 n = batch->n;
    if (n < RX_SLOTS) {
        struct rx_slot *slot = &batch->slot[n];
        slot->ts = set->ts[way];
        slot->slot = group->slot;
        __builtin_memcpy(slot->info, pending->info, INFO_BYTES);
        batch->n = n + 1;
    } else {
        probe_count(group->slot, C_IN_BATCH_OVERFLOW, 1);
    }
    set->hash[way] = 0;
    group_count(key->dev, key->layout, G_IN_TAKEN);
    probe_count(group->slot, C_IN_MATCHED, 1);
    return next;
}

/* TCP merges segments queued on a socket into one skb, which keeps the first one's header:
 * take every pending segment the skb carries, [seq, seq + skb->len), in sequence order by
 * each entry's next_seq; after a partial read, resume where the thread stopped. */
static __always_inline void tcp_take(struct rx_batch *batch, const u8 *skb, struct corr_key *key,
                                     const struct group *group, u32 g, u32 at, u64 now)
{
    u32 len = 0;
    if (g >= TARGET_GROUPS || at > CORR_BYTES - 4 || bpf_probe_read_kernel(&len, sizeof(len), skb + OFF_SKB_LEN))
        return;
    u32 seq = be32_at(key->b + at);
    u32 cursor = seq;
    for (u32 i = 0; i < TCP_CHAIN; i++) {
        key->b[at] = cursor >> 24;
        key->b[at + 1] = cursor >> 16;
        key->b[at + 2] = cursor >> 8;
        key->b[at + 3] = cursor;
        s64 next = rx_take(batch, key, group, now);
        if (next < 0) {
            if (i || !batch->resumable[g] || batch->resume[g] == seq || batch->resume[g] - seq >= len)
                break;
            cursor = batch->resume[g];
            continue;
        }
        batch->resume[g] = (u32)next;
        batch->resumable[g] = next != 0;
        if (!next || (u32)next - seq >= len)
            break;
        cursor = (u32)next;
    }
}

#if SOCK_RECV_HOOK
#define RX_TAKING(batch) 1                  /* in any call: reported where the socket layer returns */
#else
#define RX_TAKING(batch) ((batch)->active)  /* in hooked receive calls: reported at their exit */
#endif

/* TCP, raw and ICMP sockets copy each packet through skb_copy_datagram_iter, which fires
 * skb_copy_datagram_iovec in the receiving task, whichever call reads the socket. */
RAW_TRACEPOINT_PROBE(skb_copy_datagram_iovec)
{
    struct rx_batch *batch = receiver();
    if (!batch || !RX_TAKING(batch))
        return 0;
    const struct target *t = &batch->own.target;
    const u8 *skb = (const u8 *)ctx->args[0];
    struct pkt *p = pkt_buffer(AT_COPY);
    if (!p || parse_skb(skb, p, L2_IF(t->reads_l2, READS_L2_IN)))
        return 0;
    if (has_ports(p))
        admit_port(p->proto, l4_u16(p, 2));
    u64 now = bpf_ktime_get_ns();
    for (u32 g = 0; g < TARGET_GROUPS; g++) {
        if (g >= t->n_in)
            break;
        const struct group *group = &t->in_[g];
        struct corr_key key;
        const struct flow_layout *l = key_for(p, group->layout, group->dev, &key);
        if (!l)
            continue;
        u32 at = l->tcp_seq_at;
        if (at != NO_TCP_SEQ && p->proto == IPPROTO_TCP_)
            tcp_take(batch, skb, &key, group, g, at, now);
        else
            rx_take(batch, &key, group, now);
    }
    rx_settle(batch);
    return 0;
}

#if UDP_CLAIM
/* UDP copies linear datagrams without that tracepoint (and recent kernels free them on the CPU
 * that allocated them), so no hook names the datagram a receive call returns. Instead, each
 * socket a target reads keeps notes of the datagrams queued on it: their packet ids, their length
 * and their first FP_BYTES payload bytes, noted when the socket wakes its readers (sk_data_ready,
 * which recent kernels fire only for the first datagram of an empty queue), at the head of its
 * queue when a target's call starts, and at the new head when one returns. When the socket layer
 * returns a datagram to a target's call (sock_recv_length), the call's buffer holds its first bytes:
 * the oldest note whose bytes and length agree is the datagram the thread got. So several threads
 * may read one socket (pre-forked workers): each takes its own datagram, in whatever order they
 * return. Datagrams with the same first bytes and length queued together may swap readers; one
 * queued behind another and taken before any note saw it goes unmeasured. */

#define UDP_NOTES 8   /* a power of two */
#define FP_BYTES 16
/* A socket's notes, column by column: a lookup that matches bytes reads the short columns alone. */
struct udp_notes {
    u64 next; u32 n_groups;
    u8 reads_l2; u8 pad[3];               /* READS_L2_IN if a group's layout takes Ethernet bytes */
    struct group groups[TARGET_GROUPS];   /* the ingress groups of the target that reads the socket */
    u64 ids[UDP_NOTES];     /* bit g: key[i][g] holds group g's id; 0 once a reader took the note */
    u64 skb[UDP_NOTES];     /* the datagram (a note is matched by its bytes, not by this) */
    u64 seq[UDP_NOTES];     /* order of noting */
    u32 len[UDP_NOTES];     /* payload bytes */
    u8 fp[UDP_NOTES][FP_BYTES];           /* the first payload bytes, zero beyond len */
    struct corr_key key[UDP_NOTES][TARGET_GROUPS];
};
/* Sockets age out of the LRU map once no target reads them. */
BPF_TABLE("lru_hash", u64, struct udp_notes, udp_notes, UDP_SOCKETS);
BPF_PERCPU_ARRAY(notes_scratch, struct udp_notes, 1);
/* A bit per hash of a socket's address, set when it gets notes: sk_data_ready looks up only the
 * sockets whose bit is set (bits are cleared when no target is left). */
BPF_ARRAY(udp_sock_bits, u64, BIT_WORDS);

static __always_inline u64 *sock_bit(u64 sk, u64 *mask)
{
    u32 word = bit_of(sk, mask);
    return udp_sock_bits.lookup(&word);
}

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

/* Note datagram skb in a socket's notes (once: a datagram noted and not yet taken is skipped), if its
 * destination port is port (host order; 0: any port). */
static __always_inline void udp_note(struct udp_notes *notes, u64 skb, u32 which, u16 port)
{
    if (!skb)
        return;
    for (u32 i = 0; i < UDP_NOTES; i++) {
        if (notes->skb[i] == skb && notes->ids[i])
            return;
    }
    struct pkt *p = pkt_buffer(which);
    if (!p || parse_skb((const u8 *)skb, p, L2_IF(notes->reads_l2, READS_L2_IN)) || p->proto != IPPROTO_UDP_
        || !has_ports(p) || (port && l4_u16(p, 2) != port))
        return;
    u32 udp_len = l4_u16(p, 4);
    u64 seq = __sync_fetch_and_add(&notes->next, 1);
    u32 i = seq & (UDP_NOTES - 1);
    notes->ids[i] = 0;
    notes->skb[i] = skb;
    notes->seq[i] = seq;
    u32 len = udp_len > 8 ? udp_len - 8 : 0;
    notes->len[i] = len;
    __builtin_memset(notes->fp[i], 0, FP_BYTES);
    u32 n = len < FP_BYTES ? len : FP_BYTES;
    if (n)  /* (the mask keeps the size within the buffer for the verifier) */
        bpf_probe_read_kernel(notes->fp[i], n & (FP_BYTES - 1 | FP_BYTES), p->l3 + p->l4off + 8);
    u64 ids = 0;
    for (u32 g = 0; g < TARGET_GROUPS; g++) {
        if (g >= notes->n_groups)
            break;
        if (key_for(p, notes->groups[g].layout, notes->groups[g].dev, &notes->key[i][g]))
            ids |= 1 << g;
    }
    asm volatile("" ::: "memory");
    notes->ids[i] = ids;
}

/* The notes of UDP socket sk, made if it has none (without groups: the caller gives them). */
static __always_inline struct udp_notes *udp_notes_of(u64 sk)
{
    struct udp_notes *notes = udp_notes.lookup(&sk);
    if (notes)
        return notes;
    u32 zero = 0;
    struct udp_notes *fresh = notes_scratch.lookup(&zero);
    if (!fresh)
        return 0;
    fresh->next = 0;
    for (u32 i = 0; i < UDP_NOTES; i++) {  /* the scratch entry may hold another socket's notes */
        fresh->ids[i] = 0;
        fresh->skb[i] = 0;
    }
    fresh->n_groups = 0;
    fresh->reads_l2 = 0;
    udp_notes.insert(&sk, fresh);
    u64 bit;
    u64 *word = sock_bit(sk, &bit);
    mark_bit(word, bit);
    return udp_notes.lookup(&sk);
}

/* Give a socket's notes the ingress groups of the target reading it, writing only when they change
 * (the workers reading one socket share its line). */
static __always_inline void udp_groups(struct udp_notes *notes, const struct target *t)
{
    u8 reads_l2 = t->reads_l2 & READS_L2_IN;
    u64 diff = (notes->n_groups ^ t->n_in) | (notes->reads_l2 ^ reads_l2);
    for (u32 g = 0; g < TARGET_GROUPS; g++) {
        u64 a, b;
        __builtin_memcpy(&a, &notes->groups[g], sizeof(a));
        __builtin_memcpy(&b, &t->in_[g], sizeof(b));
        diff |= a ^ b;
    }
    if (!diff)
        return;
    notes->n_groups = t->n_in;
    notes->reads_l2 = reads_l2;
    __builtin_memcpy(notes->groups, t->in_, sizeof(notes->groups));
}

/* The struct sock of fd if it is a UDP socket (else 0): the thread's last answer when it reads the
 * same fd again (sock_recv_length forgets it when the call returns from another socket: the fd was
 * reused). A TCP or UDP socket's port is admitted on the way. */
static __always_inline u64 call_udp_sock(struct rx_batch *batch, u64 fd)
{
    if (batch->sock && batch->sock_fd == (s64)fd)
        return batch->sock_udp ? batch->sock : 0;
    u64 sk = fd_to_sock((u32)fd);
    u16 protocol = 0, port = 0;
    if (sk && bpf_probe_read_kernel(&protocol, sizeof(protocol), (const void *)(sk + OFF_SOCK_PROTOCOL)))
        sk = 0;
    if (sk && !bpf_probe_read_kernel(&port, sizeof(port), (const void *)(sk + OFF_SOCK_NUM)))
        admit_port(protocol, port);  /* skc_num: the local port, in host order */
    batch->sock_fd = fd;
    batch->sock = sk;
    batch->sock_udp = protocol == IPPROTO_UDP_;
    return batch->sock_udp ? sk : 0;
}

/* A target's receive call starts on fd: note the datagram it would get now. */
static __always_inline void udp_call_begins(struct rx_batch *batch, const struct target *t, u64 fd)
{
    u64 sk = call_udp_sock(batch, fd);
    if (!sk)
        return;
    struct udp_notes *notes = udp_notes_of(sk);
    if (!notes)
        return;
    udp_groups(notes, t);
    batch->sk = sk;
    udp_note(notes, udp_head(sk), AT_RECV_CALL, 0);
}

/* Runs wherever a datagram is queued on a socket whose readers sleep or poll, after the queue's lock
 * is released: the queue's tail may by then be a datagram queued after it on another CPU, or the
 * queue may be empty again (a reader not yet asleep took the datagram). The datagram being delivered
 * is the one the innermost netif_receive_skb of this CPU handed up (rx_delivering), so that one is
 * noted too, if it goes to the socket's port. */
RAW_TRACEPOINT_PROBE(sk_data_ready)
{
    u64 sk = ctx->args[0];
    u64 bit;
    u64 *word = sock_bit(sk, &bit);
    if (!word || !(*word & bit))
        return 0;
    struct udp_notes *notes = udp_notes.lookup(&sk);
    if (!notes)
        return 0;
    u64 tail = read_ptr(sk + OFF_SOCK_RECEIVE_QUEUE_PREV);
    udp_note(notes, tail, AT_DATA_READY, 0);
    u32 zero = 0;
    u64 *delivering = rx_delivering.lookup(&zero);
    u16 port = 0;
    if (delivering && *delivering && *delivering != tail
        && !bpf_probe_read_kernel(&port, sizeof(port), (const void *)(sk + OFF_SOCK_NUM)) && port)
        udp_note(notes, *delivering, AT_DATA_READY, port);
    return 0;
}

/* Up to FP_BYTES bytes a receive call got into its buffer (message index of a recvmmsg call):
 * their count, the bytes in fp. */
static __always_inline u32 call_bytes(const struct rx_batch *batch, u32 ret, u8 *fp)
{
    u64 base = batch->ubuf, cap = batch->ucap;
    if (batch->kind != RECV_FROM) {  /* msghdr (of the index-th mmsghdr): its first iovec */
        u64 msg = batch->ubuf + (batch->kind == RECV_MMSG ? (u64)batch->index * MMSGHDR_SIZE : 0);
        u64 iov = 0, vec[2] = {};
        if (bpf_probe_read_user(&iov, sizeof(iov), (const void *)(msg + MSGHDR_IOV))
            || bpf_probe_read_user(vec, sizeof(vec), (const void *)iov))
            return 0;
        base = vec[0];
        cap = vec[1];
    }
    u32 n = ret < FP_BYTES ? ret : FP_BYTES;
    if (cap < n)
        n = cap;
    if (!n || bpf_probe_read_user(fp, n & (FP_BYTES - 1 | FP_BYTES), (const void *)base))
        return 0;
    return n;
}

/* Whether the first n bytes (at most FP_BYTES) of two fingerprints agree. */
static __always_inline int same_bytes(const u8 *a, const u8 *b, u32 n)
{
    u64 a0, a1, b0, b1;
    __builtin_memcpy(&a0, a, 8);
    __builtin_memcpy(&a1, a + 8, 8);
    __builtin_memcpy(&b0, b, 8);
    __builtin_memcpy(&b1, b + 8, 8);
    u64 m0 = n >= 8 ? ~0ULL : (1ULL << (8 * n)) - 1;
    u64 m1 = n >= 16 ? ~0ULL : n <= 8 ? 0 : (1ULL << (8 * (n - 8))) - 1;
    return !((a0 ^ b0) & m0) && !((a1 ^ b1) & m1);
}

/* The socket layer returned from sk (ret bytes, or an error) to the thread's UDP receive call:
 * take the note of the datagram the call got, and note the one queued next. */
static __always_inline void udp_returned(struct rx_batch *batch, u64 sk, int ret, int flags_, u64 now)
{
    if (batch->sk != sk || ret < 0 || (flags_ & MSG_PEEK_))
        return;
    struct udp_notes *notes = udp_notes.lookup(&sk);
    if (!notes)
        return;
    u8 fp[FP_BYTES] = {};
    u32 n = call_bytes(batch, (u32)ret, fp);
    batch->index++;
    u32 best = UDP_NOTES;
    u64 oldest = ~0ULL;
    for (u32 i = 0; i < UDP_NOTES; i++) {
        u32 len = notes->len[i];
        if (notes->ids[i] && notes->seq[i] < oldest && (len == (u32)ret || (n && len > (u32)ret))
            && same_bytes(notes->fp[i], fp, n)) {
            oldest = notes->seq[i];
            best = i;
        }
    }
    if (best < UDP_NOTES) {
        best &= UDP_NOTES - 1;
        u64 ids = __sync_lock_test_and_set(&notes->ids[best], 0);
        /* A datagram noted twice at once (where it was queued, and at a reader's call on another
         * CPU) has a second note: drop it too, since a later datagram may get this one's address
         * and would then be taken for noted already. */
        u64 skb = notes->skb[best];
        for (u32 i = 0; i < UDP_NOTES; i++) {
            if (i != best && notes->skb[i] == skb)
                notes->ids[i] = 0;
        }
        for (u32 g = 0; g < TARGET_GROUPS; g++) {
            if (g >= notes->n_groups)
                break;
            if (ids & (1 << g))
                rx_take(batch, &notes->key[best][g], &notes->groups[g], now);
        }
    }
    udp_note(notes, udp_head(sk), AT_RECV_RETURN, 0);
}
#endif

/* The receive system calls are hooked for UDP, and on kernels without sock_recv_length, where
 * packets are taken only inside these calls and reported at their exit. */
/* The call starts (kind: which call; buf and cap: recvfrom's buffer and size, recvmsg's msghdr, or
 * recvmmsg's vector); for UDP, note the datagram it would get now. */
static __always_inline int rx_call_begins(u64 fd, u32 kind, u64 buf, u64 cap)
{
    struct rx_batch *batch = receiver();
    if (!batch)
        return 0;
    const struct target *t = &batch->own.target;
    batch->active = 1;
    batch->sk = 0;
    batch->kind = kind;
    batch->ubuf = buf;
    batch->ucap = cap;
    batch->index = 0;
#if UDP_CLAIM
    udp_call_begins(batch, t, fd);
#endif
    rx_settle(batch);
    return 0;
}

/* The call ends: report what was taken and not yet reported. */
static __always_inline int rx_call_ends(void)
{
    if (!gate_open(RX_GATE))
        return 0;
    struct rx_batch *batch = rx_state(0);
    if (!batch || !batch->active)
        return 0;
    batch->active = 0;
    if (batch->n)
        rx_flush(batch, bpf_ktime_get_ns());
    rx_settle(batch);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom)
{
    return rx_call_begins(args->fd, RECV_FROM, (u64)args->ubuf, args->size);
}
TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg) { return rx_call_begins(args->fd, RECV_MSG, (u64)args->msg, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmmsg) { return rx_call_begins(args->fd, RECV_MMSG, (u64)args->mmsg, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvmsg) { return rx_call_ends(); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvfrom) { return rx_call_ends(); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvmmsg) { return rx_call_ends(); }

#if SOCK_RECV_HOOK
/* Every receive call of every socket ends here, with the socket, the bytes returned (or an
 * error) and the call's flags: the packets the thread took during it are measured now. */
RAW_TRACEPOINT_PROBE(sock_recv_length)
{
    if (!gate_open(RX_GATE))  /* no target thread has anything to report: most returns */
        return 0;
    struct rx_batch *batch = rx_state(0);
    if (!batch || !(batch->active | batch->n))
        return 0;
    u64 now = bpf_ktime_get_ns();
#if UDP_CLAIM
    if (batch->active) {
        if (batch->sock != ctx->args[0])  /* the call's fd no longer names the socket noted for it */
            batch->sock = 0;
        udp_returned(batch, ctx->args[0], (int)ctx->args[1], (int)ctx->args[2], now);
    }
#endif
    if (batch->n)
        rx_flush(batch, now);
    rx_settle(batch);
    return 0;
}
#endif
