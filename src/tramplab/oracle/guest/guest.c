/* tramplab oracle guest: the /init of a throwaway initramfs booted under QEMU.
 *
 * Reads /shapes (written by the host, oracle/shapes.py), and for each shape: loads its BPF
 * programs (BPF_PROG_TYPE_TRACING, attach_btf_id from /sys/kernel/btf/vmlinux), dumps the patch
 * sites of the target functions, attaches the programs in order, dumps every bpf_trampoline_*
 * page from /proc/kcore and the sites again, triggers the targets with BPF_PROG_TEST_RUN, reads
 * what each program recorded, detaches, dumps the sites once more.  Output is a line protocol on
 * the console: "@TL <kind> <fields...> *<crc>", crc = CRC-32 of everything before " *", so a
 * line torn by a kernel message is detected and refused by the host.
 *
 * No libc: raw syscalls only, so one source cross-compiles for x86-64, arm64 and riscv64 with
 * clang/lld alone.
 */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long s64;

#if defined(__x86_64__)
enum { SYS_read = 0, SYS_write = 1, SYS_close = 3, SYS_pread64 = 17, SYS_mount = 165,
       SYS_reboot = 169, SYS_openat = 257, SYS_bpf = 321, SYS_exit = 60, SYS_mmap = 9,
       SYS_ioctl = 16 };
static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
	long ret;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10),
			 "r"(r8), "r"(r9) : "rcx", "r11", "memory");
	return ret;
}
#elif defined(__aarch64__) || defined(__riscv)
/* arm64 and riscv64 number their system calls alike (asm-generic/unistd.h) */
enum { SYS_read = 63, SYS_write = 64, SYS_close = 57, SYS_pread64 = 67, SYS_mount = 40,
       SYS_reboot = 142, SYS_openat = 56, SYS_bpf = 280, SYS_exit = 93, SYS_mmap = 222,
       SYS_ioctl = 29 };
#else
#error "unsupported arch"
#endif

#if defined(__aarch64__)
static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
	register long x8 __asm__("x8") = n;
	register long x0 __asm__("x0") = a;
	register long x1 __asm__("x1") = b;
	register long x2 __asm__("x2") = c;
	register long x3 __asm__("x3") = d;
	register long x4 __asm__("x4") = e;
	register long x5 __asm__("x5") = f;
	__asm__ volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4),
			 "r"(x5) : "memory");
	return x0;
}
#elif defined(__riscv)
static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
	register long a7 __asm__("a7") = n;
	register long a0 __asm__("a0") = a;
	register long a1 __asm__("a1") = b;
	register long a2 __asm__("a2") = c;
	register long a3 __asm__("a3") = d;
	register long a4 __asm__("a4") = e;
	register long a5 __asm__("a5") = f;
	__asm__ volatile("ecall" : "+r"(a0) : "r"(a7), "r"(a1), "r"(a2), "r"(a3), "r"(a4),
			 "r"(a5) : "memory");
	return a0;
}
#endif

#define AT_FDCWD (-100)
#define O_RDONLY 0
#define O_WRONLY 1

static void *memset(void *d, int c, unsigned long n)
{
	u8 *p = d;
	while (n--)
		*p++ = (u8)c;
	return d;
}

static void *memcpy(void *d, const void *s, unsigned long n)
{
	u8 *p = d;
	const u8 *q = s;
	while (n--)
		*p++ = *q++;
	return d;
}

static unsigned long slen(const char *s)
{
	unsigned long n = 0;
	while (s[n])
		n++;
	return n;
}

static int sneq(const char *a, const char *b, unsigned long n)
{
	for (unsigned long i = 0; i < n; i++)
		if (a[i] != b[i])
			return 0;
	return 1;
}

/* ---- output: the line protocol ------------------------------------------------------------ */

static char line[8192];
static unsigned long line_len;
static u32 crc_table[256];

static void crc_init(void)
{
	for (u32 i = 0; i < 256; i++) {
		u32 c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
		crc_table[i] = c;
	}
}

static u32 crc32(const char *p, unsigned long n)
{
	u32 c = 0xffffffffu;
	while (n--)
		c = crc_table[(c ^ (u8)*p++) & 0xff] ^ (c >> 8);
	return c ^ 0xffffffffu;
}

static void put(const char *s)
{
	unsigned long n = slen(s);
	memcpy(line + line_len, s, n);
	line_len += n;
}

static void put_hex(u64 v, int digits)
{
	static const char hx[] = "0123456789abcdef";
	for (int i = digits - 1; i >= 0; i--)
		line[line_len++] = hx[(v >> (4 * i)) & 0xf];
}

static void put_u64(u64 v)
{
	char buf[24];
	int i = 0;
	do {
		buf[i++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (i)
		line[line_len++] = buf[--i];
}

static void put_s64(s64 v)
{
	if (v < 0) {
		line[line_len++] = '-';
		put_u64((u64)-v);
	} else {
		put_u64((u64)v);
	}
}

static void put_bytes(const u8 *p, unsigned long n)
{
	for (unsigned long i = 0; i < n; i++)
		put_hex(p[i], 2);
}

static void begin(const char *kind)
{
	line_len = 0;
	put("@TL ");
	put(kind);
}

static void sp(void)
{
	line[line_len++] = ' ';
}

static void end(void)
{
	u32 c = crc32(line, line_len);
	put(" *");
	put_hex(c, 8);
	line[line_len++] = '\n';
	for (unsigned long done = 0; done < line_len;) {   /* a tty may take part of it */
		long n = sys6(SYS_write, 1, (long)(line + done), (long)(line_len - done), 0, 0, 0);
		if (n <= 0)
			break;
		done += (unsigned long)n;
	}
}

static void say(const char *kind, const char *text)
{
	begin(kind);
	sp();
	put(text);
	end();
}

static void power_off(void)
{
	enum { TCSBRK = 0x5409 };
	say("end", "power-off");
	/* tcdrain(): wait until the serial port has sent everything; powering off with lines still
	 * in the tty buffer cut the last of them (seen on arm64 7.2.12 after the 38 programs) */
	sys6(SYS_ioctl, 1, TCSBRK, 1, 0, 0, 0);
	sys6(SYS_reboot, 0xfee1dead, 672274793, 0x4321fedc, 0, 0, 0);
	sys6(SYS_exit, 0, 0, 0, 0, 0, 0);
	for (;;)
		;
}

static void die(const char *what, long err)
{
	begin("fatal");
	sp();
	put(what);
	sp();
	put_s64(err);
	end();
	power_off();
}

/* ---- files ---------------------------------------------------------------------------------- */

static long open_ro(const char *path)
{
	return sys6(SYS_openat, AT_FDCWD, (long)path, O_RDONLY, 0, 0, 0);
}

static void write_file(const char *path, const char *text)
{
	long fd = sys6(SYS_openat, AT_FDCWD, (long)path, O_WRONLY, 0, 0, 0);
	if (fd < 0)
		die(path, fd);
	sys6(SYS_write, fd, (long)text, (long)slen(text), 0, 0, 0);
	sys6(SYS_close, fd, 0, 0, 0, 0, 0);
}

/* Reads a whole (pseudo-)file into buf; returns its length. */
static unsigned long slurp(const char *path, u8 *buf, unsigned long cap)
{
	long fd = open_ro(path), n;
	unsigned long len = 0;
	if (fd < 0)
		die(path, fd);
	while (len < cap && (n = sys6(SYS_read, fd, (long)(buf + len), (long)(cap - len), 0, 0, 0)) > 0)
		len += (unsigned long)n;
	sys6(SYS_close, fd, 0, 0, 0, 0, 0);
	if (len == cap)
		die("file-too-big", (long)cap);
	return len;
}

/* ---- kernel memory through /proc/kcore ------------------------------------------------------ */

struct phdr { u32 type, flags; u64 offset, vaddr, paddr, filesz, memsz, align; };
static struct phdr kcore_ph[128];
static int kcore_nph;
static long kcore_fd;

static void kcore_open(void)
{
	u8 eh[64];
	kcore_fd = open_ro("/proc/kcore");
	if (kcore_fd < 0)
		die("/proc/kcore", kcore_fd);
	if (sys6(SYS_pread64, kcore_fd, (long)eh, 64, 0, 0, 0) != 64)
		die("kcore-header", 0);
	u64 phoff = *(u64 *)(eh + 32);
	u16 phnum = *(u16 *)(eh + 56);
	if (phnum > 128)
		phnum = 128;
	if (sys6(SYS_pread64, kcore_fd, (long)kcore_ph, phnum * (long)sizeof(struct phdr),
		 (long)phoff, 0, 0) != phnum * (long)sizeof(struct phdr))
		die("kcore-phdrs", 0);
	kcore_nph = phnum;
}

/* Reads n bytes of kernel memory at kernel virtual address a; 0 if no segment maps it. */
static int kread(u64 a, u8 *buf, unsigned long n)
{
	for (int i = 0; i < kcore_nph; i++) {
		struct phdr *p = &kcore_ph[i];
		if (p->type == 1 && a >= p->vaddr && a + n <= p->vaddr + p->memsz)
			return sys6(SYS_pread64, kcore_fd, (long)buf, (long)n,
				    (long)(p->offset + (a - p->vaddr)), 0, 0) == (long)n;
	}
	return 0;
}

/* ---- /proc/kallsyms -------------------------------------------------------------------------- */

static u8 kallsyms[48 << 20];
static unsigned long kallsyms_len;

static u64 parse_hex(const char *p, const char **endp)
{
	u64 v = 0;
	for (;; p++) {
		char c = *p;
		if (c >= '0' && c <= '9')
			v = v * 16 + (u64)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v = v * 16 + (u64)(c - 'a' + 10);
		else
			break;
	}
	*endp = p;
	return v;
}

/* Calls fn(address, name, name_len) for every line of /proc/kallsyms whose name starts with
 * prefix (whole name when exact). */
static void kallsyms_scan(const char *prefix, int exact,
			  void (*fn)(u64, const char *, unsigned long, void *), void *ctx)
{
	unsigned long plen = slen(prefix);
	kallsyms_len = slurp("/proc/kallsyms", kallsyms, sizeof(kallsyms));
	const char *p = (const char *)kallsyms, *limit = p + kallsyms_len;
	while (p < limit) {
		const char *e, *name, *nl = p;
		while (nl < limit && *nl != '\n')
			nl++;
		u64 addr = parse_hex(p, &e);
		name = e + 3;                   /* " T " */
		unsigned long nlen = 0;
		while (name + nlen < nl && name[nlen] != '\t' && name[nlen] != ' ')
			nlen++;
		if (name < nl && nlen >= plen && sneq(name, prefix, plen) && (!exact || nlen == plen))
			fn(addr, name, nlen, ctx);
		p = nl + 1;
	}
}

static void take_first(u64 addr, const char *name, unsigned long n, void *ctx)
{
	(void)name;
	(void)n;
	if (!*(u64 *)ctx)
		*(u64 *)ctx = addr;
}

static u64 ksym(const char *name)
{
	u64 a = 0;
	kallsyms_scan(name, 1, take_first, &a);
	return a;
}

/* ---- BTF ------------------------------------------------------------------------------------- */

static u8 btf[16 << 20];
static unsigned long btf_len;

static u32 btf_func_id(const char *name)
{
	u32 hdr_len = *(u32 *)(btf + 4), type_off = *(u32 *)(btf + 8), type_len = *(u32 *)(btf + 12);
	u32 str_off = *(u32 *)(btf + 16);
	const u8 *t = btf + hdr_len + type_off, *tend = t + type_len;
	const char *strs = (const char *)btf + hdr_len + str_off;
	unsigned long nlen = slen(name);
	for (u32 id = 1; t < tend; id++) {
		u32 name_off = *(u32 *)t, info = *(u32 *)(t + 4);
		u32 kind = (info >> 24) & 0x1f, vlen = info & 0xffff;
		if (kind == 12 && sneq(strs + name_off, name, nlen + 1))
			return id;
		t += 12;
		switch (kind) {
		case 1: case 14: case 17: t += 4; break;                 /* INT VAR DECL_TAG */
		case 3: t += 12; break;                                  /* ARRAY */
		case 4: case 5: case 15: case 19: t += 12 * vlen; break; /* STRUCT UNION DATASEC ENUM64 */
		case 6: case 13: t += 8 * vlen; break;                   /* ENUM FUNC_PROTO */
		default: break;
		}
	}
	return 0;
}

/* ---- bpf(2) ---------------------------------------------------------------------------------- */

static u8 attr[160];

static long bpf(int cmd)
{
	return sys6(SYS_bpf, cmd, (long)attr, sizeof(attr), 0, 0, 0);
}

#define A32(off) (*(u32 *)(attr + (off)))
#define A64(off) (*(u64 *)(attr + (off)))

enum { BPF_MAP_CREATE = 0, BPF_MAP_LOOKUP_ELEM = 1, BPF_PROG_LOAD = 5, BPF_PROG_TEST_RUN = 10,
       BPF_RAW_TRACEPOINT_OPEN = 17 };
enum { BPF_MAP_TYPE_ARRAY = 2, BPF_PROG_TYPE_TRACING = 26 };
#define VALUE_SIZE 256

static long map_create(void)
{
	memset(attr, 0, sizeof(attr));
	A32(0) = BPF_MAP_TYPE_ARRAY;
	A32(4) = 4;
	A32(8) = VALUE_SIZE;
	A32(12) = 1;
	return bpf(BPF_MAP_CREATE);
}

static char vlog[65536];

static long prog_load(const u8 *insns, u32 n, u32 attach_type, u32 btf_id, const char *name)
{
	memset(attr, 0, sizeof(attr));
	A32(0) = BPF_PROG_TYPE_TRACING;
	A32(4) = n;
	A64(8) = (u64)insns;
	A64(16) = (u64)"GPL";
	A32(24) = 1;
	A32(28) = sizeof(vlog);
	A64(32) = (u64)vlog;
	for (int i = 0; i < 15 && name[i]; i++)
		attr[48 + i] = (u8)name[i];
	A32(68) = attach_type;
	A32(108) = btf_id;
	vlog[0] = 0;
	return bpf(BPF_PROG_LOAD);
}

/* ---- the shapes file ------------------------------------------------------------------------- */

static u8 shapes[1 << 20];
static const u8 *cur;

static u32 take32(void)
{
	u32 v = *(const u32 *)cur;
	cur += 4;
	return v;
}

static const char *take_str(char *buf)
{
	u32 n = take32();
	memcpy(buf, cur, n);
	buf[n] = 0;
	cur += n;
	return buf;
}

#define MAX_PROGS 40
struct prog {
	char target[64];
	u32 attach_type, ninsns;
	u8 insns[8 * 512];
	long map_fd, prog_fd, link_fd;
	u64 target_addr;
};
static struct prog progs[MAX_PROGS];

static void dump_site(const char *when, struct prog *p)
{
	u8 b[64];
	begin("site");
	sp();
	put(when);
	sp();
	put(p->target);
	sp();
	put_hex(p->target_addr, 16);
	sp();
	if (p->target_addr && kread(p->target_addr - 16, b, 64))
		put_bytes(b, 64);
	else
		put("-");
	end();
}

/* With CALL_OPS (arm64, riscv64 7.x) a site may call the common ftrace_caller, which takes the
 * trampoline from the ftrace_ops whose address is the literal at func - 8: dump that struct, the
 * host finds the trampoline's address among its words. */
static void dump_ops(struct prog *p)
{
	u8 ops[256];
	u64 lit = 0;
	if (!p->target_addr || !kread(p->target_addr - 8, (u8 *)&lit, 8) || lit >> 48 != 0xffff ||
	    !kread(lit, ops, sizeof(ops)))
		return;
	begin("ops");
	sp();
	put(p->target);
	sp();
	put_hex(lit, 16);
	sp();
	put_bytes(ops, sizeof(ops));
	end();
}

static void dump_page(u64 addr, const char *name, unsigned long nlen, void *ctx)
{
	static u8 page[4096];
	char nm[128];
	(void)ctx;
	for (unsigned long i = 15; i < nlen; i++)       /* bpf_trampoline_<key>, not the C functions */
		if (name[i] < '0' || name[i] > '9')
			return;
	if (nlen > 120)
		nlen = 120;
	memcpy(nm, name, nlen);
	nm[nlen] = 0;
	begin("sym");
	sp();
	put_hex(addr, 16);
	sp();
	put(nm);
	end();
	if (!kread(addr, page, sizeof(page))) {
		say("unreadable", nm);
		return;
	}
	for (unsigned long off = 0; off < sizeof(page); off += 256) {
		begin("mem");
		sp();
		put_hex(addr + off, 16);
		sp();
		put_bytes(page + off, 256);
		end();
	}
}

/* A JITed program: bpf_prog_<16 hex digits of the tag>_<name>. */
static int is_prog_sym(const char *name, unsigned long nlen)
{
	if (nlen < 26 || name[25] != '_')
		return 0;
	for (int i = 9; i < 25; i++)
		if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f')))
			return 0;
	return 1;
}

static void say_sym(u64 addr, const char *name, unsigned long nlen, void *ctx)
{
	char nm[128];
	(void)ctx;
	if (!is_prog_sym(name, nlen))
		return;
	if (nlen > 120)
		nlen = 120;
	memcpy(nm, name, nlen);
	nm[nlen] = 0;
	begin("sym");
	sp();
	put_hex(addr, 16);
	sp();
	put(nm);
	end();
}

static void say_ksym(u64 addr, const char *name, unsigned long nlen, void *ctx)
{
	char nm[128];
	(void)ctx;
	if (nlen > 120)
		nlen = 120;
	memcpy(nm, name, nlen);
	nm[nlen] = 0;
	begin("ksym");
	sp();
	put_hex(addr, 16);
	sp();
	put(nm);
	end();
}

/* Whether user space reaches above 48 bits: a hint there is honoured by a kernel running
 * 52-bit VA (arm64 with LPA2/LVA), 5-level paging or sv57, and moved below otherwise. */
static int wide_user_va(void)
{
	enum { PROT_READ = 1, MAP_PRIVATE = 0x02, MAP_ANONYMOUS = 0x20 };
	long a = sys6(SYS_mmap, 1L << 51, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return a > 0 && (unsigned long)a >= (1UL << 48);
}

/* What /proc/cpuinfo says of the paging mode: riscv's "mmu : sv57" line, x86's la57 flag; and
 * whether user addresses go above 48 bits (arm64's cpuinfo says nothing of its VA size). */
static void report_paging(void)
{
	static char info[1 << 16];
	char mmu[16] = "-";
	int la57 = 0;
	unsigned long n = slurp("/proc/cpuinfo", (u8 *)info, sizeof(info) - 1);
	info[n] = 0;
	for (char *p = info; *p; p++) {
		if ((p == info || p[-1] == '\n') && sneq(p, "mmu", 3)) {
			char *v = p + 3;
			while (*v == ' ' || *v == '\t' || *v == ':')
				v++;
			int i = 0;
			while (i < 15 && v[i] && v[i] != '\n' && v[i] != ' ') {
				mmu[i] = v[i];
				i++;
			}
			mmu[i] = 0;
		}
		if (sneq(p, " la57", 5) && (p[5] == ' ' || p[5] == '\n'))
			la57 = 1;
	}
	begin("paging");
	sp();
	put(mmu);
	sp();
	put_u64((u64)la57);
	sp();
	put_u64((u64)wide_user_va());
	end();
}

static long test_run(long prog_fd)
{
	memset(attr, 0, sizeof(attr));
	A32(0) = (u32)prog_fd;
	long err = bpf(BPF_PROG_TEST_RUN);
	return err < 0 ? err : (long)A32(4);
}

static void run_shape(long trigger_fentry, long trigger_fmodret)
{
	char name[64];
	take_str(name);
	u32 nprogs = take32(), trigger = take32();
	if (nprogs > MAX_PROGS)
		die("too-many-progs", nprogs);
	say("shape", name);
	for (u32 i = 0; i < nprogs; i++) {
		struct prog *p = &progs[i];
		take_str(p->target);
		p->attach_type = take32();
		p->ninsns = take32();
		memcpy(p->insns, cur, 8 * p->ninsns);
		cur += 8 * p->ninsns;
		p->map_fd = map_create();
		if (p->map_fd < 0)
			die("map-create", p->map_fd);
		for (u32 k = 0; k < p->ninsns; k++)      /* ld_imm64 with BPF_PSEUDO_MAP_FD */
			if (p->insns[8 * k] == 0x18 && (p->insns[8 * k + 1] >> 4) == 1)
				*(u32 *)(p->insns + 8 * k + 4) = (u32)p->map_fd;
		p->target_addr = ksym(p->target);
		u32 id = btf_func_id(p->target);
		begin("prog");
		sp();
		put_u64(i);
		sp();
		put(p->target);
		sp();
		put_u64(id);
		sp();
		put_hex(p->target_addr, 16);
		end();
		char pname[16] = "tl_p";             /* bpf_obj_name_cpy: alnum, '_' and '.' only */
		pname[4] = (char)('0' + i / 10 % 10);
		pname[5] = (char)('0' + i % 10);
		pname[6] = 0;
		if (i < 10) {
			pname[4] = pname[5];
			pname[5] = 0;
		}
		p->prog_fd = id ? prog_load(p->insns, p->ninsns, p->attach_type, id, pname) : -2;
		p->link_fd = -1;
		if (p->prog_fd < 0) {
			begin("load-error");
			sp();
			put_u64(i);
			sp();
			put_s64(p->prog_fd);
			end();
			say("verifier", vlog[0] ? "log follows" : "no log");
			for (char *s = vlog; *s;) {
				char *e = s;
				while (*e && *e != '\n')
					e++;
				char c = *e;
				*e = 0;
				say("vlog", s);
				if (!c)
					break;
				s = e + 1;
			}
		}
	}
	for (u32 i = 0; i < nprogs; i++)
		dump_site("before", &progs[i]);
	for (u32 i = 0; i < nprogs; i++) {
		struct prog *p = &progs[i];
		if (p->prog_fd < 0)
			continue;
		memset(attr, 0, sizeof(attr));
		A32(8) = (u32)p->prog_fd;
		p->link_fd = bpf(BPF_RAW_TRACEPOINT_OPEN);
		begin("attach");
		sp();
		put_u64(i);
		sp();
		put_s64(p->link_fd < 0 ? p->link_fd : 0);
		end();
	}
	for (u32 i = 0; i < nprogs; i++) {
		dump_site("attached", &progs[i]);
		dump_ops(&progs[i]);
	}
	kallsyms_scan("bpf_trampoline_", 0, dump_page, 0);
	kallsyms_scan("bpf_prog_", 0, say_sym, 0);
	begin("run");
	sp();
	put_s64(test_run(trigger ? trigger_fmodret : trigger_fentry));
	end();
	for (u32 i = 0; i < nprogs; i++) {
		struct prog *p = &progs[i];
		static u8 value[VALUE_SIZE];
		u32 key = 0;
		memset(attr, 0, sizeof(attr));
		A32(0) = (u32)p->map_fd;
		A64(8) = (u64)&key;
		A64(16) = (u64)value;
		long err = bpf(BPF_MAP_LOOKUP_ELEM);
		begin("seen");
		sp();
		put_u64(i);
		sp();
		if (err < 0)
			put_s64(err);
		else
			put_bytes(value, VALUE_SIZE);
		end();
	}
	for (u32 i = 0; i < nprogs; i++)
		if (progs[i].link_fd >= 0)
			sys6(SYS_close, progs[i].link_fd, 0, 0, 0, 0, 0);
	for (u32 i = 0; i < nprogs; i++)
		dump_site("detached", &progs[i]);
	for (u32 i = 0; i < nprogs; i++) {
		if (progs[i].prog_fd >= 0)
			sys6(SYS_close, progs[i].prog_fd, 0, 0, 0, 0, 0);
		sys6(SYS_close, progs[i].map_fd, 0, 0, 0, 0, 0);
	}
	say("shape-end", name);
}

static const u8 trivial[16] = { 0xb7, 0, 0, 0, 0, 0, 0, 0,       /* r0 = 0 */
				0x95, 0, 0, 0, 0, 0, 0, 0 };     /* exit */

static long trigger_prog(const char *target, u32 attach_type)
{
	u32 id = btf_func_id(target);
	long fd = id ? prog_load(trivial, 2, attach_type, id, "tl_trigger") : -2;
	begin("trigger");
	sp();
	put(target);
	sp();
	put_s64(fd);
	end();
	return fd;
}

#if defined(__x86_64__)
__attribute__((force_align_arg_pointer))        /* the kernel enters with rsp 16-aligned */
#endif
void _start(void)
{
	crc_init();
	sys6(SYS_mount, (long)"proc", (long)"/proc", (long)"proc", 0, 0, 0);
	sys6(SYS_mount, (long)"sysfs", (long)"/sys", (long)"sysfs", 0, 0, 0);
	write_file("/proc/sys/kernel/kptr_restrict", "0");
	write_file("/proc/sys/net/core/bpf_jit_kallsyms", "1");
	write_file("/proc/sys/kernel/printk", "1");
	say("hello", "tramplab-oracle-guest 1");
	/* The kernel's default, left as it is: without BPF_JIT_DEFAULT_ON (Debian's riscv64)
	 * programs are interpreted and trampolines call __bpf_prog_run* with prog->insnsi. */
	{
		char was[8] = "";
		long fd = open_ro("/proc/sys/net/core/bpf_jit_enable");
		if (fd >= 0) {
			sys6(SYS_read, fd, (long)was, 1, 0, 0, 0);
			sys6(SYS_close, fd, 0, 0, 0, 0, 0);
			say("jit-default", was);
		}
	}
	report_paging();
	kcore_open();
	btf_len = slurp("/sys/kernel/btf/vmlinux", btf, sizeof(btf));
	unsigned long n = slurp("/shapes", shapes, sizeof(shapes));
	cur = shapes;
	if (n < 8 || take32() != 0x524f4c54)            /* "TLOR" */
		die("bad-shapes-file", (long)n);
	u32 nshapes = take32(), nprefixes = take32();
	for (u32 i = 0; i < nprefixes; i++) {           /* kernel symbols the host names calls by */
		char prefix[64];
		take_str(prefix);
		kallsyms_scan(prefix, 0, say_ksym, 0);
	}
	long t_fentry = trigger_prog("bpf_fentry_test1", 24);
	long t_fmodret = trigger_prog("bpf_modify_return_test", 26);
	for (u32 s = 0; s < nshapes; s++)
		run_shape(t_fentry, t_fmodret);
	power_off();
}
