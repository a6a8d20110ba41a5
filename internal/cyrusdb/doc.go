// Package cyrusdb reads the key-value database files that Cyrus IMAP keeps
// under its configdirectory, above all mailboxes.db, without Cyrus's own
// library and without ever writing to them.
//
// Three of Cyrus's engines are understood:
//
//   - twoskip, the default since Cyrus 2.5 (lib/cyrusdb_twoskip.c);
//   - skiplist, the 2.3/2.4 default still found on upgraded sites
//     (lib/cyrusdb_skiplist.c);
//   - flat, a sorted text file (lib/cyrusdb_flat.c).
//
// The file is usually live: a Cyrus process (the frontend's mupdate replica)
// may be writing it while we read. ReadFile therefore follows Cyrus's own
// reader protocol: it takes the shared fcntl lock Cyrus writers respect,
// checks that the path still names the inode it locked (a repack or a flat
// rewrite renames a new file over the old one), copies the committed bytes
// into memory and drops the lock at once, so that Cyrus writers are held up
// for no longer than one read. Parsing happens afterwards on the private
// copy.
//
// Only the committed state is ever returned. A twoskip file whose header is
// DIRTY, or that is longer than its committed size, is a file a writer is
// changing or one that crashed; Cyrus would repair it on its next write
// open, but this package never writes, so it reads the committed view and
// reports Info.Dirty. Damage inside the committed region is reported as a
// *FormatError naming the engine, the byte offset and what is wrong, so that
// an operator can act on the log line. Parsing never panics, never loops
// forever and never allocates more than a small multiple of the file size,
// whatever the bytes are.
package cyrusdb
