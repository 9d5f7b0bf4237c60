/*
 * msproxy bench load generator: a single-threaded epoll memcached text-protocol
 * client. It drives one server (msproxy, twemproxy or memcached) with a fixed
 * mix and checks every value it reads back.
 *
 * Every key k has one possible value: its length (min..max bytes) and bytes are
 * functions of k, so a get is checked exactly (a miss is allowed only for keys
 * not preloaded). Output: one JSON line with requests, req/s, p50/p99 latency
 * in microseconds, errors and bad values.
 *
 *   loadgen --port P [--host H] [--conns 100] [--depth 1] [--mget 1]
 *           [--get-ratio 0.9] [--keys 100000] [--min 1024] [--max 4096]
 *           [--seconds 5] [--rate 0] [--preload] [--seed 1] [--prefix b:]
 *           [--binary]
 *
 * --binary speaks memcached's binary protocol (GET and SET packets; --mget 1
 * only): the same mix and checks, answered by status and body.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
  int fd;
  char *out;
  size_t out_len, out_off, out_cap;
  char *in;
  size_t in_len, in_cap;
  /* outstanding requests: kind (0 set, 1 get) and number of keys, FIFO */
  int *kinds;
  int *nkeys;
  int *keyidx; /* keys of get requests, depth * mget */
  uint64_t sent_at;
  int head, count, cap;
  int vals_seen; /* VALUE blocks seen in the current get reply */
} conn_t;

static const char *host = "127.0.0.1";
static int port = 0, nconns = 100, depth = 1, mget = 1, nkeys = 100000, vmin = 1024, vmax = 4096;
static double get_ratio = 0.9, seconds = 5, rate = 0;
static int preload = 0, binary = 0;
static unsigned long long seed = 1;
static const char *prefix = "b:";
static uint64_t requests = 0, errors = 0, badvals = 0, hits = 0;
static uint32_t *hist; /* latency histogram, 1 us buckets up to 1 s, last bucket overflow */
#define HIST_MAX 1000000

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static uint64_t rng(void) { /* xorshift64* */
  seed ^= seed >> 12;
  seed ^= seed << 25;
  seed ^= seed >> 27;
  return seed * 2685821657736338717ull;
}

static uint32_t mix(uint32_t k) {
  k ^= k >> 16;
  k *= 0x7feb352d;
  k ^= k >> 15;
  k *= 0x846ca68b;
  k ^= k >> 16;
  return k;
}

static int vlen(int k) { return vmin + (int)(mix((uint32_t)k) % (uint32_t)(vmax - vmin + 1)); }
static char vbyte(int k, int i) { return (char)('a' + (unsigned)(k * 31 + i) % 26u); }

static void die(const char *m) {
  perror(m);
  exit(2);
}

static void reserve(char **buf, size_t *cap, size_t need) {
  if (need <= *cap) return;
  size_t c = *cap ? *cap : 4096;
  while (c < need) c *= 2;
  *buf = realloc(*buf, c);
  if (!*buf) die("realloc");
  *cap = c;
}

static void put(conn_t *c, const char *s, size_t n) {
  reserve(&c->out, &c->out_cap, c->out_len + n);
  memcpy(c->out + c->out_len, s, n);
  c->out_len += n;
}

/* A binary request header: opcode, key and extras lengths, body length (big-endian). */
static void put_bin_header(conn_t *c, int op, int klen, int elen, uint32_t blen) {
  unsigned char h[24] = {0};
  h[0] = 0x80;
  h[1] = (unsigned char)op;
  h[2] = (unsigned char)(klen >> 8);
  h[3] = (unsigned char)klen;
  h[4] = (unsigned char)elen;
  h[8] = (unsigned char)(blen >> 24);
  h[9] = (unsigned char)(blen >> 16);
  h[10] = (unsigned char)(blen >> 8);
  h[11] = (unsigned char)blen;
  put(c, (const char *)h, 24);
}

static void push_set(conn_t *c, int k) {
  char line[128];
  int len = vlen(k);
  if (binary) {
    int kl = snprintf(line, sizeof line, "%s%d", prefix, k);
    put_bin_header(c, 0x01, kl, 8, (uint32_t)(8 + kl + len));
    put(c, "\0\0\0\0\0\0\0\0", 8); /* flags, expiration */
    put(c, line, (size_t)kl);
    reserve(&c->out, &c->out_cap, c->out_len + (size_t)len);
    for (int i = 0; i < len; i++) c->out[c->out_len + i] = vbyte(k, i);
    c->out_len += (size_t)len;
    return;
  }
  int n = snprintf(line, sizeof line, "set %s%d 0 0 %d\r\n", prefix, k, len);
  put(c, line, (size_t)n);
  reserve(&c->out, &c->out_cap, c->out_len + (size_t)len + 2);
  for (int i = 0; i < len; i++) c->out[c->out_len + i] = vbyte(k, i);
  c->out_len += (size_t)len;
  put(c, "\r\n", 2);
}

static void enqueue(conn_t *c, int kind, int n) {
  int at = (c->head + c->count) % c->cap;
  c->kinds[at] = kind;
  c->nkeys[at] = n;
  c->count++;
}

/* Queue one batch of `depth` requests on c. */
static void issue(conn_t *c) {
  for (int d = 0; d < depth; d++) {
    int at = (c->head + c->count) % c->cap;
    int is_get = (double)(rng() % 10000) / 10000.0 < get_ratio;
    if (is_get && binary) {
      int k = (int)(rng() % (uint64_t)nkeys);
      c->keyidx[at * mget] = k;
      char key[64];
      int kl = snprintf(key, sizeof key, "%s%d", prefix, k);
      put_bin_header(c, 0x00, kl, 0, (uint32_t)kl);
      put(c, key, (size_t)kl);
      enqueue(c, 1, 1);
    } else if (is_get) {
      put(c, "get", 3);
      for (int j = 0; j < mget; j++) {
        int k = (int)(rng() % (uint64_t)nkeys);
        c->keyidx[at * mget + j] = k;
        char tok[64];
        int n = snprintf(tok, sizeof tok, " %s%d", prefix, k);
        put(c, tok, (size_t)n);
      }
      put(c, "\r\n", 2);
      enqueue(c, 1, mget);
    } else {
      push_set(c, (int)(rng() % (uint64_t)nkeys));
      enqueue(c, 0, 1);
    }
  }
  c->sent_at = now_ns();
}

static int flush_out(conn_t *c) {
  while (c->out_off < c->out_len) {
    ssize_t w = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
    if (w < 0) {
      if (errno == EAGAIN) return 0;
      die("write");
    }
    c->out_off += (size_t)w;
  }
  c->out_off = c->out_len = 0;
  return 1;
}

static int check_value(int k, const char *data, int len) {
  if (len != vlen(k)) return 0;
  for (int i = 0; i < len; i++)
    if (data[i] != vbyte(k, i)) return 0;
  return 1;
}

/* Parse complete binary responses in c->in; returns the number of requests completed. */
static int parse_binary(conn_t *c) {
  int done = 0;
  size_t off = 0;
  while (c->count > 0 && c->in_len - off >= 24) {
    const unsigned char *p = (const unsigned char *)c->in + off;
    uint32_t blen = ((uint32_t)p[8] << 24) | ((uint32_t)p[9] << 16) | ((uint32_t)p[10] << 8) | p[11];
    if (c->in_len - off < 24 + (size_t)blen) break;
    int status = (p[6] << 8) | p[7];
    int elen = p[4];
    int slot = c->head;
    if (p[0] != 0x81) errors++;
    else if (c->kinds[slot] == 0) {
      if (status != 0) errors++;
    } else if (status == 0) {
      int k = c->keyidx[slot * mget];
      if (!check_value(k, (const char *)p + 24 + elen, (int)blen - elen)) badvals++;
      hits++;
    } else if (status != 1) {
      errors++; /* a miss (status 1) is not an error */
    }
    off += 24 + (size_t)blen;
    c->head = (c->head + 1) % c->cap;
    c->count--;
    done++;
  }
  if (off > 0) {
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
  }
  return done;
}

/* Parse complete replies in c->in; returns the number of requests completed. */
static int parse(conn_t *c) {
  if (binary) return parse_binary(c);
  int done = 0;
  size_t off = 0;
  while (c->count > 0) {
    char *p = c->in + off;
    size_t avail = c->in_len - off;
    char *nl = memchr(p, '\n', avail);
    if (!nl) break;
    size_t ll = (size_t)(nl - p + 1);
    int slot = c->head;
    if (c->kinds[slot] == 0) {
      if (ll != 8 || memcmp(p, "STORED\r\n", 8) != 0) errors++;
      off += ll;
    } else if (ll >= 6 && memcmp(p, "VALUE ", 6) == 0) {
      int klen = 0;
      while (p[6 + klen] != ' ') klen++;
      int bytes = 0;
      char *q = p + 6 + klen + 1;
      while (*q != ' ') q++; /* flags */
      q++;
      while (*q >= '0' && *q <= '9') bytes = bytes * 10 + (*q++ - '0');
      if (avail < ll + (size_t)bytes + 2) break;
      int k = atoi(p + 6 + strlen(prefix));
      /* keys come back in request order, misses skipped: find it among the slot's keys */
      int found = 0;
      for (int j = c->vals_seen; j < mget && !found; j++)
        if (c->keyidx[slot * mget + j] == k) found = 1, c->vals_seen = j + 1;
      if (!found || !check_value(k, p + ll, bytes)) badvals++;
      hits++;
      off += ll + (size_t)bytes + 2;
      continue;
    } else {
      if (ll == 5 && memcmp(p, "END\r\n", 5) == 0) {
        /* END: the get is complete (misses are not errors) */
      } else {
        errors++;
      }
      off += ll;
      c->vals_seen = 0;
    }
    c->head = (c->head + 1) % c->cap;
    c->count--;
    done++;
  }
  if (off > 0) {
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
  }
  return done;
}

static int connect_one(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) die("socket");
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  inet_pton(AF_INET, host, &a.sin_addr);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  fcntl(fd, F_SETFL, O_NONBLOCK);
  return fd;
}

static void do_preload(void) {
  /* Blocking-ish preload on one connection, pipelined in chunks of 100. */
  conn_t c = {0};
  c.fd = connect_one();
  c.cap = 128;
  c.kinds = calloc((size_t)c.cap, sizeof(int));
  c.nkeys = calloc((size_t)c.cap, sizeof(int));
  c.keyidx = calloc((size_t)c.cap * (size_t)mget, sizeof(int));
  for (int k = 0; k < nkeys;) {
    int n = 0;
    for (; n < 100 && k < nkeys; n++, k++) {
      push_set(&c, k);
      enqueue(&c, 0, 1);
    }
    while (!flush_out(&c)) usleep(100);
    while (c.count > 0) {
      reserve(&c.in, &c.in_cap, c.in_len + 65536);
      ssize_t r = read(c.fd, c.in + c.in_len, 65536);
      if (r < 0 && errno == EAGAIN) {
        usleep(50);
        continue;
      }
      if (r <= 0) die("preload read");
      c.in_len += (size_t)r;
      parse(&c);
    }
  }
  close(c.fd);
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : "";
    if (!strcmp(a, "--host")) host = v, i++;
    else if (!strcmp(a, "--port")) port = atoi(v), i++;
    else if (!strcmp(a, "--conns")) nconns = atoi(v), i++;
    else if (!strcmp(a, "--depth")) depth = atoi(v), i++;
    else if (!strcmp(a, "--mget")) mget = atoi(v), i++;
    else if (!strcmp(a, "--get-ratio")) get_ratio = atof(v), i++;
    else if (!strcmp(a, "--keys")) nkeys = atoi(v), i++;
    else if (!strcmp(a, "--min")) vmin = atoi(v), i++;
    else if (!strcmp(a, "--max")) vmax = atoi(v), i++;
    else if (!strcmp(a, "--seconds")) seconds = atof(v), i++;
    else if (!strcmp(a, "--rate")) rate = atof(v), i++;
    else if (!strcmp(a, "--seed")) seed = strtoull(v, NULL, 10), i++;
    else if (!strcmp(a, "--prefix")) prefix = v, i++;
    else if (!strcmp(a, "--preload")) preload = 1;
    else if (!strcmp(a, "--binary")) binary = 1;
    else {
      fprintf(stderr, "unknown argument %s\n", a);
      return 2;
    }
  }
  if (port <= 0 || nconns <= 0 || depth <= 0 || mget <= 0 || nkeys <= 0 || vmin > vmax ||
      (binary && mget != 1)) {
    fprintf(stderr, "bad arguments\n");
    return 2;
  }
  if (seed == 0) seed = 1;
  hist = calloc(HIST_MAX + 1, sizeof(uint32_t));
  if (preload) do_preload();

  int ep = epoll_create1(0);
  conn_t *cs = calloc((size_t)nconns, sizeof(conn_t));
  for (int i = 0; i < nconns; i++) {
    conn_t *c = &cs[i];
    c->fd = connect_one();
    c->cap = depth + 1;
    c->kinds = calloc((size_t)c->cap, sizeof(int));
    c->nkeys = calloc((size_t)c->cap, sizeof(int));
    c->keyidx = calloc((size_t)c->cap * (size_t)mget, sizeof(int));
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.u32 = (uint32_t)i};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
  }
  uint64_t start = now_ns();
  uint64_t end = start + (uint64_t)(seconds * 1e9);
  /* Rate mode: a batch may start once (batches started) < rate * elapsed / depth. */
  uint64_t batches = 0;
  int *idle = calloc((size_t)nconns, sizeof(int));
  int nidle = 0;
  for (int i = 0; i < nconns; i++) idle[nidle++] = i;
  struct epoll_event evs[256];
  int stopping = 0;
  for (;;) {
    uint64_t t = now_ns();
    if (t >= end) stopping = 1;
    /* start batches on idle connections */
    while (!stopping && nidle > 0) {
      if (rate > 0) {
        double allowed = rate * (double)(t - start) / 1e9 / depth;
        if ((double)batches >= allowed) break;
      }
      conn_t *c = &cs[idle[--nidle]];
      issue(c);
      batches++;
      flush_out(c);
    }
    if (stopping && nidle == nconns) break;
    int n = epoll_wait(ep, evs, 256, 1);
    if (n < 0 && errno != EINTR) die("epoll_wait");
    for (int e = 0; e < n; e++) {
      int i = (int)evs[e].data.u32;
      conn_t *c = &cs[i];
      if (evs[e].events & EPOLLOUT) flush_out(c);
      if (!(evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
      for (;;) {
        reserve(&c->in, &c->in_cap, c->in_len + 65536);
        ssize_t r = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
        if (r < 0 && errno == EAGAIN) break;
        if (r <= 0) {
          fprintf(stderr, "connection %d closed\n", i);
          return 1;
        }
        c->in_len += (size_t)r;
      }
      int had = c->count;
      int done = parse(c);
      if (done > 0) requests += (uint64_t)done;
      if (had > 0 && c->count == 0) {
        uint64_t us = (now_ns() - c->sent_at) / 1000;
        hist[us > HIST_MAX ? HIST_MAX : us] += (uint32_t)had;
        idle[nidle++] = i;
      }
    }
  }
  double el = (double)(now_ns() - start) / 1e9;
  uint64_t total = 0, acc = 0;
  for (int i = 0; i <= HIST_MAX; i++) total += hist[i];
  int p50 = -1, p99 = -1;
  for (int i = 0; i <= HIST_MAX; i++) {
    acc += hist[i];
    if (p50 < 0 && acc * 2 >= total) p50 = i;
    if (p99 < 0 && acc * 100 >= total * 99) p99 = i;
  }
  printf("{\"requests\":%llu,\"seconds\":%.3f,\"rps\":%.0f,\"p50_us\":%d,\"p99_us\":%d,"
         "\"errors\":%llu,\"bad_values\":%llu,\"hits\":%llu}\n",
         (unsigned long long)requests, el, (double)requests / el, p50, p99,
         (unsigned long long)errors, (unsigned long long)badvals, (unsigned long long)hits);
  return errors > 0 || badvals > 0 ? 1 : 0;
}
