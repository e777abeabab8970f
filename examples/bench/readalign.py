# How fast the kernel copies a cached file into a buffer, by where the buffer starts in its page:
#   python3 examples/bench/readalign.py <a file of 256 MiB or more, read once before so it is cached>
# On the AMD CPU of BENCHMARKS.md's machine, 8 and 16 bytes in ran at a fifth of the speed of 0,
# 32, 64, 2048 or 4080 (round 5). chunkd's download batches start on a cache line for this
# reason (`upload::READ_ALIGN`).
import mmap, os, sys, time
path, n = sys.argv[1], 256 * 1024
size = min(os.path.getsize(path), 256 << 20)
m = mmap.mmap(-1, n + 8192)  # anonymous, page-aligned
fd = os.open(path, os.O_RDONLY)
for off in [0, 8, 16, 32, 64, 2048, 4080]:
    view = memoryview(m)[off:off + n]
    os.lseek(fd, 0, 0)
    t, done = time.perf_counter(), 0
    while done < size:
        done += os.readv(fd, [view])
    print(f"destination {off:4} bytes into its page: {size / (time.perf_counter() - t) / 1e6:6.0f} MB/s")
