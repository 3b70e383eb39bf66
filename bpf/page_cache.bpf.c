/* ---- Page cache filled by traced processes, per (device, inode) --------- */

BPF_HASH(files, struct file_key, struct file_cache, 16384);
/* The files worth a name, once each: a server's start-up reads thousands of
 * small sources, and naming a file means looking through open descriptors. */
BPF_HASH(files_named, struct file_key, u8, 1024);

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
	if (!fc->named && fc->added >= NAMED_FILE_BYTES) {
		u8 one = 1;
		fc->named = 1;  /* racing CPUs at most send it twice */
		files_named.update(&key, &one);
	}
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
