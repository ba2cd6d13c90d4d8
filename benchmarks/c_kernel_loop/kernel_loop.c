/*
 * The kernel's pending-table loops for one VM, in plain C: the benchmarks' "plain compiled code"
 * reference (built and loaded by benchmarks/cbaseline.py; written for vlpi from the documented
 * semantics, not taken from Linux).
 *
 * vlpi_c_save -- vgic_v3_save_pending_tables for one VM:
 *   LPIs are visited in walk order (a row index array sorted by INTID, prepared once outside the
 *   timing, as KVM's xarray is kept sorted; NULL = array order). An LPI without a target is
 *   skipped with no access and leaves the byte cache alone. The table byte is
 *   pendbase[vcpu] + intid / 8; every guest access resolves its memslot by a binary search over
 *   the sorted slot starts (as KVM's gfn -> memslot look-up) and then reads or writes the host
 *   byte. A read is issued only when the byte's guest address differs from the previous targeted
 *   LPI's (a 1-byte cache keyed on the guest address). The wanted state is pending_latch, or the
 *   VPT bit when the LPI is forwarded (hw) and the host has GICv4.1. Each changed bit is one
 *   1-byte write of the cached byte with that bit flipped (write-through), and each write marks
 *   its 4 KiB page in the slot's dirty bitmap, as KVM's dirty log does. The walk stops at the
 *   first faulting access (no slot, or a write into a read-only slot).
 *
 * vlpi_c_restore -- vgic_v3_lpi_sync_pending_status for each LPI in row order: read the byte
 *   (no cache), pending_latch = bit, and when the bit was 1 write the byte back with it cleared.
 *   Stops at the first fault.
 *
 * Besides the kernel's own work, the caller's report needs the distinct pages written and, for
 * the save, the number of guest bytes whose final value differs from their value before the
 * walk. The loop only appends (address, value read) for the first write of each run of cache
 * hits, a sequential log. With last_run (a per-vCPU "last logged address", given when the walk is
 * in INTID order and no two vCPUs' tables share bytes, so each vCPU's addresses never decrease)
 * a byte revisited by a later run is not logged again; otherwise the log is deduplicated after
 * the walk with per-slot scratch (one bit per slot byte). Pages are deduplicated with one scratch
 * byte per page. The scratch is cleared again before returning.
 */
#include <stddef.h>
#include <stdint.h>

#define PAGE_SHIFT 12
#define NO_ADDR UINT64_MAX

struct vlpi_slots {
    int64_t n;                /* number of slots */
    const uint64_t *start;    /* sorted guest start addresses */
    const uint64_t *end;      /* exclusive ends */
    uint8_t *const *data;     /* host address of each slot's first byte */
    const uint8_t *readonly;  /* 1 = read-only */
    uint8_t *const *dirty;    /* KVM-style dirty log: one byte per 4 KiB page from start >> 12 on */
    uint8_t *const *page_seen;/* scratch: one byte per page, all zero between calls */
    uint8_t *const *byte_seen;/* scratch: one bit per slot byte, all zero between calls */
};

struct vlpi_save_out {
    int64_t reads, writes, vpt_reads, skipped;
    int64_t fault_row, fault_is_write;  /* fault_row = -1: the walk completed */
    uint64_t fault_gpa;
    int64_t bytes_changed, n_pages;
};

struct vlpi_restore_out {
    int64_t reads, writes, synced;
    int64_t fault_row, fault_is_write;
    uint64_t fault_gpa;
    int64_t n_pages;
};

/* The slot holding guest address addr, or -1: binary search over the sorted starts. */
static inline int64_t find_slot(const struct vlpi_slots *m, uint64_t addr)
{
    int64_t lo = 0, hi = m->n;
    while (lo < hi) {
        int64_t mid = (lo + hi) >> 1;
        if (m->start[mid] <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    lo -= 1;
    return (lo >= 0 && addr < m->end[lo]) ? lo : -1;
}

/* Remember the page of a written guest byte for the report (once per page). */
static inline void log_page(const struct vlpi_slots *m, int64_t s, uint64_t addr,
                            int64_t *pages, int64_t *page_slot, int64_t *n_pages)
{
    uint64_t rel = (addr >> PAGE_SHIFT) - (m->start[s] >> PAGE_SHIFT);
    if (!m->page_seen[s][rel]) {
        m->page_seen[s][rel] = 1;
        pages[*n_pages] = (int64_t)(addr >> PAGE_SHIFT);
        page_slot[*n_pages] = s;
        (*n_pages)++;
    }
}

static void clear_pages(const struct vlpi_slots *m, const int64_t *pages, const int64_t *page_slot,
                        int64_t n_pages)
{
    for (int64_t k = 0; k < n_pages; k++) {
        int64_t s = page_slot[k];
        m->page_seen[s][(uint64_t)pages[k] - (m->start[s] >> PAGE_SHIFT)] = 0;
    }
}

int64_t vlpi_c_save(int64_t n, const int64_t *walk, const uint32_t *intid, const int32_t *target,
                    const uint8_t *latch, const uint8_t *hw, const uint64_t *pendbase,
                    const uint8_t *vpt, int64_t vpt_bytes, int32_t use_vpt,
                    const struct vlpi_slots *m,
                    uint64_t *run_gpa, uint8_t *run_old, uint64_t *last_run,
                    int64_t *pages, int64_t *page_slot, struct vlpi_save_out *out)
{
    int64_t reads = 0, writes = 0, vpt_reads = 0, skipped = 0, n_runs = 0;
    int64_t fault_row = -1, fault_is_write = 0;
    uint64_t fault_gpa = 0;
    uint64_t last = NO_ADDR;
    uint8_t val = 0, old = 0;
    int logged = 0;

    for (int64_t k = 0; k < n; k++) {
        int64_t i = walk ? walk[k] : k;
        int32_t v = target[i];
        if (v < 0) {
            skipped++;
            continue;
        }
        uint32_t iid = intid[i];
        uint64_t addr = pendbase[v] + (iid >> 3);
        if (addr != last) {
            reads++;
            int64_t s = find_slot(m, addr);
            if (s < 0) {
                fault_row = i; fault_gpa = addr;
                break;
            }
            val = old = m->data[s][addr - m->start[s]];
            last = addr;
            logged = 0;
        }
        unsigned bit = iid & 7;
        unsigned want = latch[i] != 0;
        if (use_vpt && hw[i]) {
            vpt_reads++;
            want = (vpt[(int64_t)v * vpt_bytes + (iid >> 3)] >> bit) & 1;
        }
        if (((val >> bit) & 1) == want)
            continue;
        val ^= (uint8_t)(1u << bit);
        writes++;
        int64_t s = find_slot(m, addr);
        if (m->readonly[s]) {
            fault_row = i; fault_is_write = 1; fault_gpa = addr;
            break;
        }
        m->data[s][addr - m->start[s]] = val;
        m->dirty[s][(addr >> PAGE_SHIFT) - (m->start[s] >> PAGE_SHIFT)] = 1;  /* KVM's dirty log */
        if (!logged) {  /* for the report: the byte's value when this run of cache hits read it */
            logged = 1;
            if (!last_run || last_run[v] != addr) {
                if (last_run)
                    last_run[v] = addr;
                run_gpa[n_runs] = addr;
                run_old[n_runs] = old;
                n_runs++;
            }
        }
    }

    /* For the report, after the walk: bytes whose final value differs from their value before
     * it (the first run that wrote a byte saw its original value) and the distinct pages written.
     * Then the scratch is reset. */
    int64_t changed = 0, n_pages = 0;
    if (last_run) {  /* each written byte is logged once: no deduplication needed */
        for (int64_t k = 0; k < n_runs; k++) {
            uint64_t addr = run_gpa[k];
            int64_t s = find_slot(m, addr);
            changed += m->data[s][addr - m->start[s]] != run_old[k];
            log_page(m, s, addr, pages, page_slot, &n_pages);
        }
    } else {
        for (int64_t k = 0; k < n_runs; k++) {
            uint64_t addr = run_gpa[k];
            int64_t s = find_slot(m, addr);
            uint64_t off = addr - m->start[s];
            uint8_t *seen = m->byte_seen[s] + (off >> 3);
            if (!(*seen & (1u << (off & 7)))) {
                *seen |= (uint8_t)(1u << (off & 7));
                changed += m->data[s][off] != run_old[k];
                log_page(m, s, addr, pages, page_slot, &n_pages);
            }
        }
        for (int64_t k = 0; k < n_runs; k++) {
            uint64_t addr = run_gpa[k];
            int64_t s = find_slot(m, addr);
            m->byte_seen[s][(addr - m->start[s]) >> 3] = 0;
        }
    }
    clear_pages(m, pages, page_slot, n_pages);

    out->reads = reads; out->writes = writes; out->vpt_reads = vpt_reads; out->skipped = skipped;
    out->fault_row = fault_row; out->fault_is_write = fault_is_write; out->fault_gpa = fault_gpa;
    out->bytes_changed = changed; out->n_pages = n_pages;
    return fault_row;
}

int64_t vlpi_c_restore(int64_t n, const uint32_t *intid, const int32_t *target, uint8_t *latch,
                       const uint64_t *pendbase, const struct vlpi_slots *m, int64_t *pages, int64_t *page_slot,
                       struct vlpi_restore_out *out)
{
    int64_t reads = 0, writes = 0, synced = 0, n_pages = 0;
    int64_t fault_row = -1, fault_is_write = 0;
    uint64_t fault_gpa = 0;

    for (int64_t i = 0; i < n; i++) {
        int32_t v = target[i];
        if (v < 0)
            continue;
        uint32_t iid = intid[i];
        uint64_t addr = pendbase[v] + (iid >> 3);
        reads++;
        int64_t s = find_slot(m, addr);
        if (s < 0) {
            fault_row = i; fault_gpa = addr;
            break;
        }
        uint8_t val = m->data[s][addr - m->start[s]];
        unsigned bit = iid & 7;
        unsigned st = (val >> bit) & 1;
        latch[i] = (uint8_t)st;
        if (st) {
            writes++;
            s = find_slot(m, addr);
            if (m->readonly[s]) {
                fault_row = i; fault_is_write = 1; fault_gpa = addr;
                break;
            }
            m->data[s][addr - m->start[s]] = val & (uint8_t)~(1u << bit);
            m->dirty[s][(addr >> PAGE_SHIFT) - (m->start[s] >> PAGE_SHIFT)] = 1;  /* KVM's dirty log */
            log_page(m, s, addr, pages, page_slot, &n_pages);
        }
        synced++;
    }
    clear_pages(m, pages, page_slot, n_pages);
    out->reads = reads; out->writes = writes; out->synced = synced;
    out->fault_row = fault_row; out->fault_is_write = fault_is_write; out->fault_gpa = fault_gpa;
    out->n_pages = n_pages;
    return fault_row;
}
