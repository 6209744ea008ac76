// A caching device allocator: requests are rounded up to size classes and freed blocks wait in
// a free list per class, so the same shapes step after step reuse the same memory without
// calling the driver (cuMemAlloc/cuMemFree synchronize and cost tens of microseconds).
// All work runs on one stream, so a block freed on the host can be handed out again at once:
// later kernels are queued after the ones that used it.
//
// Plain TypeScript over an injected `RawMemory`, so it is tested without a GPU.

export interface RawMemory {
  /** a new device block of `bytes`, or 0 when the device is out of memory */
  alloc(bytes: number): number;
  free(ptr: number): void;
}

export interface AllocatorStats {
  /** bytes obtained from the driver (live + cached) */
  reservedBytes: number;
  peakReservedBytes: number;
  /** bytes in free lists, ready for reuse */
  cachedBytes: number;
  cachedBlocks: number;
  /** driver allocations, and requests served from the cache */
  driverAllocs: number;
  cacheHits: number;
}

const MIN_BLOCK = 512;
const SMALL_LIMIT = 1 << 20;

/**
 * The size class of a request: multiples of 512 bytes up to 1 MiB, then 8 steps per power of
 * two (at most 12.5% rounding).
 */
export function sizeClass(bytes: number): number {
  if (bytes <= MIN_BLOCK) return MIN_BLOCK;
  if (bytes <= SMALL_LIMIT) return Math.ceil(bytes / MIN_BLOCK) * MIN_BLOCK;
  const step = 2 ** (Math.floor(Math.log2(bytes)) - 3);
  return Math.ceil(bytes / step) * step;
}

export class CachingAllocator {
  private readonly free = new Map<number, number[]>();
  /** while a graph capture is open: never give the cache back to the driver (that synchronizes) */
  holdCache = false;
  private stats: AllocatorStats = {
    reservedBytes: 0,
    peakReservedBytes: 0,
    cachedBytes: 0,
    cachedBlocks: 0,
    driverAllocs: 0,
    cacheHits: 0,
  };

  constructor(
    private readonly raw: RawMemory,
    /** called before freeing cached blocks back to the driver (waits for queued work) */
    private readonly beforeRelease: () => void = () => {},
  ) {}

  /** A block of at least `bytes` (bytes > 0): its address and class size. */
  allocate(bytes: number): { ptr: number; size: number } {
    const size = sizeClass(bytes);
    const list = this.free.get(size);
    if (list && list.length) {
      const ptr = list.pop()!;
      this.stats.cachedBytes -= size;
      this.stats.cachedBlocks--;
      this.stats.cacheHits++;
      return { ptr, size };
    }
    let ptr = this.raw.alloc(size);
    if (!ptr && this.stats.cachedBlocks > 0 && !this.holdCache) {
      // out of memory: give the cache back to the driver and try once more
      this.emptyCache();
      ptr = this.raw.alloc(size);
    }
    if (!ptr) {
      throw new Error(
        `cuda backend: out of device memory allocating ${formatBytes(size)} ` +
          `(${formatBytes(this.stats.reservedBytes)} held by this process)`,
      );
    }
    this.stats.driverAllocs++;
    this.stats.reservedBytes += size;
    if (this.stats.reservedBytes > this.stats.peakReservedBytes) {
      this.stats.peakReservedBytes = this.stats.reservedBytes;
    }
    return { ptr, size };
  }

  /** Return a block (its class size as given by allocate) to the cache. */
  release(ptr: number, size: number): void {
    let list = this.free.get(size);
    if (!list) {
      list = [];
      this.free.set(size, list);
    }
    list.push(ptr);
    this.stats.cachedBytes += size;
    this.stats.cachedBlocks++;
  }

  /** Free every cached block back to the driver. */
  emptyCache(): void {
    if (this.stats.cachedBlocks === 0) return;
    this.beforeRelease();
    for (const [size, list] of this.free) {
      for (const ptr of list) {
        this.raw.free(ptr);
        this.stats.reservedBytes -= size;
      }
    }
    this.free.clear();
    this.stats.cachedBytes = 0;
    this.stats.cachedBlocks = 0;
  }

  getStats(): AllocatorStats {
    return { ...this.stats };
  }

  resetPeak(): void {
    this.stats.peakReservedBytes = this.stats.reservedBytes;
  }
}

export function formatBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (n >= 2 ** 10) return `${(n / 2 ** 10).toFixed(1)} KiB`;
  return `${n} B`;
}

/**
 * The private pool of one CUDA graph: blocks freed while its capture is open (or freed later,
 * when they were allocated during it). Its kernels may touch them at every replay, so they are
 * never handed to anyone else while the graph lives; inside the open capture they are reused
 * (the captured kernels run in stream order, so a reuse is as safe as in eager mode).
 */
export class GraphPool {
  private readonly free = new Map<number, number[]>();
  /** true while the capture is open: only then are freed blocks handed out again */
  open = true;
  /** set by the graph's destroy: later frees of its blocks go back to the allocator */
  destroyed = false;
  /** bytes held in the free lists */
  heldBytes = 0;

  /** a freed block of class `size` for an allocation inside the open capture, or 0 */
  take(size: number): number {
    if (!this.open) return 0;
    const ptr = this.free.get(size)?.pop();
    if (!ptr) return 0;
    this.heldBytes -= size;
    return ptr;
  }

  put(ptr: number, size: number): void {
    let list = this.free.get(size);
    if (!list) this.free.set(size, (list = []));
    list.push(ptr);
    this.heldBytes += size;
  }

  /** Hand every held block to `release` (the caching allocator) and forget them. */
  drain(release: (ptr: number, size: number) => void): void {
    for (const [size, list] of this.free) for (const ptr of list) release(ptr, size);
    this.free.clear();
    this.heldBytes = 0;
  }
}
