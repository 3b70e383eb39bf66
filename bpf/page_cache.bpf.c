/* ---- Page cache filled by traced processes, per (device, inode) --------- */

BPF_HASH(files, struct file_key, struct file_cache, 16384);

TRACEPOINT_PROBE(filemap, mm_filemap_add_to_page_cache)
{
	if (!find_state(current_tgid()))
		return 0;
	struct file_key key = { .dev = args->s_dev, .ino = args->i_ino };
	struct file_cache zero = {};
	struct file_cache *fc = files.lookup_or_try_init(&key, &zero);
	if (!fc) {
		stat_inc(STAT_FILES_FULL);
		return 0;
	}
	__sync_fetch_and_add(&fc->added, (u64)PAGE_BYTES << args->order);
	return 0;
}

/* Evictions happen in any context (kswapd, truncation): match on the file. */
TRACEPOINT_PROBE(filemap, mm_filemap_delete_from_page_cache)
{
	struct file_key key = { .dev = args->s_dev, .ino = args->i_ino };
	struct file_cache *fc = files.lookup(&key);
	if (fc)
		__sync_fetch_and_add(&fc->removed, (u64)PAGE_BYTES << args->order);
	return 0;
}
