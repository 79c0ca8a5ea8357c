/* clusterfs-agent-sim's connections: requests parsed as they arrive, answers rendered at
 * once and held until due (a list sorted by due time, the timerfd armed to its head), and
 * the event loop over listeners, connections, the timer and the signals. */
#include "tools/agent-sim.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

static void conn_set_events(struct sim *s, struct conn *c, uint32_t events)
{
	if (c->events == events)
		return;
	struct epoll_event ev = {.events = events, .data.ptr = &c->w};
	if (epoll_ctl(s->epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0)
		c->events = events;
}

static void due_unlink(struct sim *s, struct conn *c)
{
	if (c->due_prev)
		c->due_prev->due_next = c->due_next;
	else
		s->due_head = c->due_next;
	if (c->due_next)
		c->due_next->due_prev = c->due_prev;
	else
		s->due_tail = c->due_prev;
	c->due_prev = c->due_next = NULL;
}

/* Inserts c by due time. The delay is constant, so this almost always appends. */
static void due_insert(struct sim *s, struct conn *c)
{
	struct conn *after = s->due_tail;
	while (after && after->due_us > c->due_us)
		after = after->due_prev;
	c->due_prev = after;
	c->due_next = after ? after->due_next : s->due_head;
	if (c->due_next)
		c->due_next->due_prev = c;
	else
		s->due_tail = c;
	if (after)
		after->due_next = c;
	else
		s->due_head = c;
}

void sim_conn_close(struct sim *s, struct conn *c)
{
	if (c->state == CONN_CLOSED)
		return;
	if (c->state == CONN_WAITING)
		due_unlink(s, c);
	close(c->fd); /* also drops it from the epoll set */
	c->fd = -1;
	c->state = CONN_CLOSED;
	buf_free(&c->out);
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->prev = NULL;
	c->next = s->dead;
	s->dead = c;
	s->n_conns--;
}

void sim_free_dead(struct sim *s)
{
	while (s->dead) {
		struct conn *c = s->dead;
		s->dead = c->next;
		free(c);
	}
}

static const char *status_reason(unsigned status)
{
	switch (status) {
	case 200: return "OK";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 413: return "Content Too Large";
	case 431: return "Request Header Fields Too Large";
	case 501: return "Not Implemented";
	default: return "Error";
	}
}

/* Puts a whole answer in c->out: status line, headers, body. */
static void conn_put_answer(struct conn *c, unsigned status, const char *extra_header,
			    const char *body, size_t body_len)
{
	buf_printf(&c->out,
		   "HTTP/1.1 %u %s\r\n"
		   "Content-Type: application/json\r\n"
		   "Cache-Control: no-store\r\n"
		   "Content-Length: %zu\r\n"
		   "%s%s"
		   "%s"
		   "\r\n",
		   status, status_reason(status), body_len, extra_header ? extra_header : "",
		   extra_header ? "\r\n" : "", c->close_after ? "Connection: close\r\n" : "");
	buf_append(&c->out, body, body_len);
}

static void conn_put_error(struct conn *c, unsigned status, const char *extra_header,
			   const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* An answer {"error": "..."}; the message is made printable ASCII first. */
static void conn_put_error(struct conn *c, unsigned status, const char *extra_header,
			   const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	for (char *p = msg; *p; p++)
		if ((unsigned char) *p < 0x20 || (unsigned char) *p >= 0x7f)
			*p = '?';
	json_t *doc = json_pack("{s:s}", "error", msg);
	char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
	json_decref(doc);
	if (!text)
		abort();
	struct buf body;
	buf_init(&body);
	buf_printf(&body, "%s\n", text);
	free(text);
	conn_put_answer(c, status, extra_header, body.data, body.len);
	buf_free(&body);
}

/* Finds header `name` (case-insensitive) among the header lines in [p, end). Returns
 * its value with surrounding blanks trimmed, or NULL. */
static const char *header_find(const char *p, const char *end, const char *name, size_t *ret_len)
{
	size_t nlen = strlen(name);
	while (p < end) {
		const char *eol = memchr(p, '\n', (size_t) (end - p));
		if (!eol)
			eol = end;
		if ((size_t) (eol - p) > nlen && strncasecmp(p, name, nlen) == 0 &&
		    p[nlen] == ':') {
			const char *v = p + nlen + 1, *ve = eol;
			while (v < ve && (*v == ' ' || *v == '\t'))
				v++;
			while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
				ve--;
			*ret_len = (size_t) (ve - v);
			return v;
		}
		p = eol + 1;
	}
	return NULL;
}

static bool token_matches(const struct sim *s, const char *v, size_t len)
{
	if (!v || len < 7 || strncasecmp(v, "Bearer", 6) != 0 || (v[6] != ' ' && v[6] != '\t'))
		return false;
	const char *t = v + 6;
	while (t < v + len && (*t == ' ' || *t == '\t'))
		t++;
	char given[4200];
	size_t glen = (size_t) (v + len - t);
	if (glen >= sizeof(given))
		return false;
	memcpy(given, t, glen);
	given[glen] = '\0';
	bool ok = secret_equal(given, s->token);
	explicit_bzero(given, glen);
	return ok;
}

/* Handles the request at the start of c->in when it is complete: renders its answer into
 * c->out, consumes it and returns true. False when more bytes are needed. A malformed
 * request gets an error answer and close_after. */
/* Answers a whole, well-formed request for target (its query cut off here). */
static void conn_answer(struct sim *s, struct conn *c, const char *method, char *target,
			const char *headers, const char *end)
{
	size_t vlen;
	const char *v = header_find(headers, end, "Authorization", &vlen);
	char *query = strchr(target, '?');
	if (query)
		*query = '\0';
	if (!token_matches(s, v, vlen)) {
		s->n_unauthorized++;
		conn_put_error(c, 401, "WWW-Authenticate: Bearer",
			       "unauthorized: missing or invalid bearer token");
	} else if (strcmp(target, "/api/node/health") != 0 &&
		   strcmp(target, "/api/node/system") != 0) {
		conn_put_error(c, 404, NULL, "no such endpoint: %.200s", target);
	} else if (strcmp(method, "GET") != 0) {
		conn_put_error(c, 405, "Allow: GET", "method %.16s not allowed on %.200s", method,
			       target);
	} else if (strcmp(target, "/api/node/system") == 0) {
		const struct sim_node *node = &s->nodes[c->node];
		conn_put_answer(c, 200, NULL, node->system_body, node->system_len);
	} else {
		struct buf body;
		buf_init(&body);
		sim_render_health(s, &s->nodes[c->node], &body);
		conn_put_answer(c, 200, NULL, body.data, body.len);
		buf_free(&body);
	}
}

static bool conn_take_request(struct sim *s, struct conn *c)
{
	char *hdr_end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
	if (!hdr_end) {
		if (c->in_len < sizeof(c->in))
			return false;
		c->close_after = true;
		c->in_len = 0;
		conn_put_error(c, 431, NULL, "request headers larger than %d bytes",
			       SIM_MAX_REQUEST);
		return true;
	}
	size_t head_len = (size_t) (hdr_end - c->in) + 4;
	const char *line_end = memchr(c->in, '\r', head_len);
	const char *end = c->in + head_len - 2;

	/* request line: METHOD SP TARGET SP HTTP/1.x */
	char method[16], target[1024], version[16];
	int n = 0;
	char line[sizeof(target) + 64];
	size_t line_len = (size_t) (line_end - c->in);
	bool parsed = false;
	if (line_len < sizeof(line)) {
		memcpy(line, c->in, line_len);
		line[line_len] = '\0';
		parsed = sscanf(line, "%15s %1023s %15s%n", method, target, version, &n) == 3 &&
			 (size_t) n == line_len &&
			 (strcmp(version, "HTTP/1.1") == 0 || strcmp(version, "HTTP/1.0") == 0);
	}
	const char *headers = line_end + 2;

	size_t vlen;
	const char *v = header_find(headers, end, "Connection", &vlen);
	bool http10 = parsed && strcmp(version, "HTTP/1.0") == 0;
	if (v && vlen == 5 && strncasecmp(v, "close", 5) == 0)
		c->close_after = true;
	else if (http10 && !(v && vlen == 10 && strncasecmp(v, "keep-alive", 10) == 0))
		c->close_after = true;

	size_t body_len = 0;
	v = header_find(headers, end, "Content-Length", &vlen);
	if (v) {
		char num[24];
		long cl = -1;
		if (vlen < sizeof(num)) {
			memcpy(num, v, vlen);
			num[vlen] = '\0';
			if (!sim_parse_long(num, 0, SIM_MAX_REQUEST, &cl))
				cl = -1;
		}
		if (cl < 0 || head_len + (size_t) cl > sizeof(c->in)) {
			c->close_after = true;
			c->in_len = 0;
			conn_put_error(c, 413, NULL,
				       "request body too large: the limit is %d bytes",
				       SIM_MAX_REQUEST);
			return true;
		}
		body_len = (size_t) cl;
	}
	if (header_find(headers, end, "Transfer-Encoding", &vlen)) {
		c->close_after = true;
		c->in_len = 0;
		conn_put_error(c, 501, NULL,
			       "Transfer-Encoding is not supported; send Content-Length");
		return true;
	}
	if (c->in_len < head_len + body_len)
		return false;

	s->n_requests++;
	if (!parsed) {
		c->close_after = true;
		c->in_len = 0;
		conn_put_error(c, 400, NULL, "malformed request line");
		return true;
	}
	conn_answer(s, c, method, target, headers, end);
	size_t used = head_len + body_len;
	memmove(c->in, c->in + used, c->in_len - used);
	c->in_len -= used;
	return true;
}

static void conn_send(struct sim *s, struct conn *c);

/* In CONN_READING: takes the next buffered request, if complete, and holds its answer
 * until it is due (or sends it now when there is no delay). */
static void conn_advance(struct sim *s, struct conn *c)
{
	if (c->state != CONN_READING || !conn_take_request(s, c))
		return;
	if (s->delay_us == 0) {
		conn_send(s, c);
		return;
	}
	c->state = CONN_WAITING;
	c->due_us = clock_now_us() + s->delay_us;
	due_insert(s, c);
	conn_set_events(s, c, 0);
}

/* Sends what is left of the answer; then reads on, closes, or waits for EPOLLOUT. */
static void conn_send(struct sim *s, struct conn *c)
{
	while (c->out_off < c->out.len) {
		ssize_t w = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off,
				 MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			c->state = CONN_WRITING;
			conn_set_events(s, c, EPOLLOUT);
			return;
		}
		if (w < 0)
			return sim_conn_close(s, c);
		c->out_off += (size_t) w;
	}
	if (c->close_after)
		return sim_conn_close(s, c);
	buf_free(&c->out);
	c->out_off = 0;
	c->state = CONN_READING;
	conn_set_events(s, c, EPOLLIN);
	conn_advance(s, c); /* a pipelined request may be waiting */
}

static void conn_on_readable(struct sim *s, struct conn *c)
{
	for (;;) {
		if (c->in_len == sizeof(c->in))
			break;
		ssize_t r = recv(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (r <= 0)
			return sim_conn_close(s, c); /* peer closed, or reset */
		c->in_len += (size_t) r;
	}
	conn_advance(s, c);
}

static void listener_on_readable(struct sim *s, struct listener *l)
{
	for (;;) {
		int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0 && errno == EINTR)
			continue;
		if (fd < 0 && (errno == EMFILE || errno == ENFILE)) {
			/* out of fds: accept and drop one so the listener does not spin */
			static bool warned;
			if (!warned)
				log_warn("out of file descriptors with %zu connections open; "
					 "dropping new connections",
					 s->n_conns);
			warned = true;
			if (s->spare_fd >= 0) {
				close(s->spare_fd);
				fd = accept(l->fd, NULL, NULL);
				if (fd >= 0)
					close(fd);
				s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
			}
			return;
		}
		if (fd < 0)
			return; /* EAGAIN, or the client gave up (ECONNABORTED) */
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		struct conn *c = xcalloc(1, sizeof(*c));
		c->w.kind = WATCH_CONN;
		c->fd = fd;
		c->node = l->node;
		c->state = CONN_READING;
		c->events = EPOLLIN;
		buf_init(&c->out);
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &c->w};
		if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
			close(fd);
			free(c);
			continue;
		}
		c->next = s->conns;
		if (s->conns)
			s->conns->prev = c;
		s->conns = c;
		s->n_accepted++;
		if (++s->n_conns > s->peak_conns)
			s->peak_conns = s->n_conns;
	}
}

/* Sends every held answer that is due. */
static void sim_on_timer(struct sim *s)
{
	uint64_t expirations;
	if (read(s->tfd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
		log_warn("timerfd read: %s", strerror(errno));
	s->armed_us = 0;
	uint64_t now = clock_now_us();
	while (s->due_head && s->due_head->due_us <= now) {
		struct conn *c = s->due_head;
		due_unlink(s, c);
		c->state = CONN_WRITING; /* conn_send moves it on */
		conn_send(s, c);
	}
}

/* Arms the timerfd for the earliest held answer, when that changed. */
static void sim_arm_timer(struct sim *s)
{
	uint64_t want = s->due_head ? s->due_head->due_us : 0;
	if (want == s->armed_us)
		return;
	struct itimerspec its = {0};
	if (want) {
		its.it_value.tv_sec = (time_t) (want / 1000000u);
		its.it_value.tv_nsec = (long) (want % 1000000u) * 1000;
	}
	if (timerfd_settime(s->tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0) {
		log_err("timerfd_settime: %s", strerror(errno));
		abort();
	}
	s->armed_us = want;
}

static void sim_on_signal(struct sim *s)
{
	struct signalfd_siginfo si;
	if (read(s->sfd, &si, sizeof(si)) != (ssize_t) sizeof(si))
		return;
	log_info("received %s, shutting down", si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
	s->stop = true;
}

int sim_run(struct sim *s)
{
	struct epoll_event evs[SIM_MAX_EVENTS];
	while (!s->stop) {
		sim_arm_timer(s);
		int n = epoll_wait(s->epfd, evs, SIM_MAX_EVENTS, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			log_err("epoll_wait: %s", strerror(errno));
			return -errno;
		}
		for (int i = 0; i < n; i++) {
			struct watch *w = evs[i].data.ptr;
			switch (w->kind) {
			case WATCH_LISTENER: listener_on_readable(s, (struct listener *) w); break;
			case WATCH_TIMER: sim_on_timer(s); break;
			case WATCH_SIGNAL: sim_on_signal(s); break;
			case WATCH_CONN: {
				struct conn *c = (struct conn *) w;
				if (c->state == CONN_WRITING && (evs[i].events & EPOLLOUT))
					conn_send(s, c);
				else if (c->state == CONN_READING &&
					 (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
					conn_on_readable(s, c);
				else if (evs[i].events & (EPOLLHUP | EPOLLERR))
					sim_conn_close(s, c);
				break;
			}
			}
		}
		sim_free_dead(s);
	}
	return 0;
}
