/* The least work that correlates one UDP client's packets: a bound for the benches, not a design.
 *
 * With --experiment, bench/rtt_overhead.py and bench/throughput.py load it (kind least-work of
 * bench/hookctl.py) on the engine's hooks, with empty programs on the hooks it does not use: what it
 * costs above the empty programs is near the least any program set on these hooks costs once it measures a
 * packet's egress (send call -> outer xmit) and ingress (outer receive -> receive call's return).
 * It knows one process (TGID, taken as one thread), one socket and one outer device, and correlates by
 * the first 8 payload bytes alone (IPv4 without options); it keeps one pending packet per direction,
 * takes a datagram queued on the socket as the next one read, and counts into two log2 histograms.
 * Everything else the engine does (targets by cgroup, many probes, flow layouts, sets of ways, several
 * readers per socket, expiry, rate limits, admission) is left out.
 *
 * Defined by the loader: OFF_* (kernel struct offsets from BTF), SKB_SPAN_START, SKB_SPAN_LEN.
 */

#define CONF_TGID 0      /* the client's TGID */
#define CONF_IFINDEX 1   /* the outer device, in... */
#define CONF_NETNS 2     /* ...this network namespace (inode) */
#define CONF_DEV 3       /* its struct net_device, learned from the first packet seen on it */
#define CONF_SOCK 4      /* the client's socket, learned at its first receive call */
BPF_ARRAY(conf, u64, 5);

struct pending { u64 key; u64 time; };
BPF_ARRAY(pending, struct pending, 2);   /* 0: the request sent, 1: the reply received */
BPF_ARRAY(send_start, u64, 1);           /* the client's send call, until its first device */
BPF_PERCPU_ARRAY(xmit_hit, u64, 1);      /* start_xmit found the request on the outer device */
BPF_ARRAY(noted, u64, 1);                /* key of the datagram queued on the client's socket */
BPF_ARRAY(hist, u64, 128);               /* log2(ns) buckets: 0-63 egress, 64-127 ingress */
BPF_ARRAY(sums, u64, 2);                 /* ns in all: egress, ingress */

static __always_inline u64 *conf_at(u32 i) { return conf.lookup(&i); }

static __always_inline int is_client(void)
{
    u64 *tgid = conf_at(CONF_TGID);
    return tgid && (bpf_get_current_pid_tgid() >> 32) == *tgid;
}

/* The first 8 payload bytes of an IPv4 UDP packet (0: not one). */
static __always_inline u64 packet_key(u64 skb)
{
    u8 span[SKB_SPAN_LEN] __attribute__((aligned(8)));
    if (bpf_probe_read_kernel(span, sizeof(span), (const void *)(skb + SKB_SPAN_START)))
        return 0;
    u64 head = *(u64 *)(span + (OFF_SKB_HEAD - SKB_SPAN_START));
    u16 nh = *(u16 *)(span + (OFF_SKB_NETWORK_HEADER - SKB_SPAN_START));
    u8 ip[40] __attribute__((aligned(8)));
    if (bpf_probe_read_kernel(ip, 36, (const void *)(head + nh)) || ip[0] != 0x45 || ip[9] != 17)
        return 0;
    u64 key;
    __builtin_memcpy(&key, ip + 28, sizeof(key));
    return key;
}

/* Whether dev is the outer device (its address, once learned, is compared). */
static __always_inline int is_outer_device(u64 dev)
{
    u64 *known = conf_at(CONF_DEV);
    if (!known || !dev)
        return 0;
    if (*known)
        return *known == dev;
    u32 ifindex = 0, inum = 0;
    u64 net = 0;
    bpf_probe_read_kernel(&ifindex, sizeof(ifindex), (const void *)(dev + OFF_DEV_IFINDEX));
    bpf_probe_read_kernel(&net, sizeof(net), (const void *)(dev + OFF_DEV_NET));
    bpf_probe_read_kernel(&inum, sizeof(inum), (const void *)(net + OFF_NET_INUM));
    u64 *want_ifindex = conf_at(CONF_IFINDEX);
    u64 *want_net = conf_at(CONF_NETNS);
    if (!want_ifindex || !want_net || ifindex != *want_ifindex || inum != *want_net)
        return 0;
    *known = dev;
    return 1;
}

static __always_inline void record(u32 base, u64 ns)
{
    u32 direction = base / 64;
    u64 *sum = sums.lookup(&direction);
    if (sum)
        __sync_fetch_and_add(sum, ns);
    u32 bucket = base;  /* + log2(ns) (the BPF back end has no count of leading zeros) */
    for (u32 shift = 32; shift; shift >>= 1) {
        if (ns >> shift) {
            ns >>= shift;
            bucket += shift;
        }
    }
    u64 *count = hist.lookup(&bucket);
    if (count)
        __sync_fetch_and_add(count, 1);
}

TRACEPOINT_PROBE(syscalls, sys_enter_sendto)
{
    u32 zero = 0;
    u64 *start = send_start.lookup(&zero);
    if (start && is_client())
        *start = bpf_ktime_get_ns();
    return 0;
}

RAW_TRACEPOINT_PROBE(net_dev_queue)
{
    u32 zero = 0;
    u64 *start = send_start.lookup(&zero);
    if (!start || !*start || !is_client())
        return 0;
    struct pending *p = pending.lookup(&zero);
    u64 key = packet_key(ctx->args[0]);
    if (p && key) {
        p->key = key;
        p->time = *start;
    }
    *start = 0;
    return 0;
}

RAW_TRACEPOINT_PROBE(net_dev_start_xmit)
{
    u64 skb = ctx->args[0];
    if (!is_outer_device(ctx->args[1]))
        return 0;
    u32 zero = 0;
    struct pending *p = pending.lookup(&zero);
    u64 *hit = xmit_hit.lookup(&zero);
    if (p && hit && p->key && p->key == packet_key(skb))
        *hit = 1;
    return 0;
}

RAW_TRACEPOINT_PROBE(net_dev_xmit)
{
    u32 zero = 0;
    u64 *hit = xmit_hit.lookup(&zero);
    if (!hit || !*hit)
        return 0;
    *hit = 0;
    struct pending *p = pending.lookup(&zero);
    if (p && (int)ctx->args[1] == 0) {
        record(0, bpf_ktime_get_ns() - p->time);
        p->key = 0;
    }
    return 0;
}

RAW_TRACEPOINT_PROBE(netif_receive_skb)
{
    u64 skb = ctx->args[0], dev = 0;
    bpf_probe_read_kernel(&dev, sizeof(dev), (const void *)(skb + OFF_SKB_DEV));
    if (!is_outer_device(dev))
        return 0;
    u32 one = 1;
    struct pending *p = pending.lookup(&one);
    u64 key = packet_key(skb);
    if (p && key) {
        p->key = key;
        p->time = bpf_ktime_get_ns();
    }
    return 0;
}

RAW_TRACEPOINT_PROBE(sk_data_ready)
{
    u64 *sock = conf_at(CONF_SOCK);
    if (!sock || *sock != ctx->args[0])
        return 0;
    u64 skb = 0;
    bpf_probe_read_kernel(&skb, sizeof(skb), (const void *)(ctx->args[0] + OFF_SOCK_RECEIVE_QUEUE_PREV));
    u32 zero = 0;
    u64 *key = noted.lookup(&zero);
    if (key && skb)
        *key = packet_key(skb);
    return 0;
}

RAW_TRACEPOINT_PROBE(sock_recv_length)
{
    if (!is_client())
        return 0;
    u64 *sock = conf_at(CONF_SOCK);
    if (sock && !*sock)
        *sock = ctx->args[0];
    u32 zero = 0, one = 1;
    u64 *key = noted.lookup(&zero);
    struct pending *p = pending.lookup(&one);
    if (key && p && *key && *key == p->key && (int)ctx->args[1] > 0) {
        record(64, bpf_ktime_get_ns() - p->time);
        p->key = 0;
        *key = 0;
    }
    return 0;
}
