package cyrusdb

import "bytes"

// Info describes one database file and the committed state read from it.
type Info struct {
	Format Format
	// Inode is the file's inode number (0 for Parse of an in-memory image).
	Inode uint64
	// FileSize is the length of the file when it was read.
	FileSize int64
	// CommittedSize is where the committed state ends: the twoskip header's
	// current_size, the end of the last skiplist COMMIT, or the flat file's
	// size.
	CommittedSize int64
	// Generation is the twoskip generation, bumped by every repack and
	// recovery rewrite; 0 for the other engines.
	Generation uint64
	// Dirty reports a twoskip DIRTY flag or a file longer than its committed
	// size: a writer was mid-transaction or crashed. The committed view was
	// read all the same; any Cyrus process repairs the file on its next
	// write open.
	Dirty bool
	// Records is the number of live keys actually read (0 from Stat).
	Records int
	// HeaderRecords is the twoskip header's num_records (the live key count
	// the last commit recorded; 0 for the other engines). A difference from
	// Records after a full read deserves a warning in the log but is not
	// treated as corruption, as Cyrus itself never relies on it.
	HeaderRecords uint64
	// RepackSize is the twoskip header's repack_size, the file size right
	// after the last repack; 0 for the other engines.
	RepackSize int64
	// Warning, if not empty, says why part of the file was not used, for
	// the log: for skiplist, where and why the log replay stopped before
	// the end of the file.
	Warning string
}

// span is a byte range in a DB's buffer.
type span struct{ off, n int }

type entry struct{ k, v span }

// DB is an immutable snapshot of a database's committed records. It is safe
// for concurrent use by multiple goroutines.
type DB struct {
	Info Info

	buf       []byte
	recs      []entry
	rawSorted bool
}

// ForEach calls fn for every live key, in the order the engine keeps them:
// the file's own comparator order for twoskip (raw byte order for Cyrus
// 3.6+ mailboxes.db, the "mbox" order for older ones), raw byte order for
// skiplist (the replay loses the file's order, see parseSkiplist), and file
// order for flat. key and value alias the DB's buffer and stay valid, and
// unchanged, for the DB's lifetime; callers must not modify them. A non-nil
// error from fn stops the walk and is returned.
func (db *DB) ForEach(fn func(key, value []byte) error) error {
	for _, e := range db.recs {
		k := db.buf[e.k.off : e.k.off+e.k.n : e.k.off+e.k.n]
		v := db.buf[e.v.off : e.v.off+e.v.n : e.v.off+e.v.n]
		if err := fn(k, v); err != nil {
			return err
		}
	}
	return nil
}

// Len returns the number of live keys.
func (db *DB) Len() int { return len(db.recs) }

// RawSorted reports whether ForEach yields keys in strictly increasing raw
// byte order, with no duplicates. It is true for every healthy Cyrus 3.6+
// mailboxes.db. It may be false for a healthy pre-3.6 mailboxes.db, whose
// keys follow the "mbox" comparator ('.' sorts first), or for a flat file
// written by hand; a consumer that needs sorted keys or binary search must
// sort when it is false, and one that builds a map must decide what a
// duplicate key means.
func (db *DB) RawSorted() bool { return db.rawSorted }

// Parse parses an in-memory image of a whole database file. f may be Auto,
// in which case Detect picks the engine. Info.FileSize is len(data) and
// Info.Inode is 0. The DB keeps a reference to data, which the caller must
// not modify afterwards.
func Parse(data []byte, f Format) (*DB, error) {
	return parse(data, f, int64(len(data)))
}

// parse parses data, which may be only the committed prefix of a file of
// fileSize bytes.
func parse(data []byte, f Format, fileSize int64) (*DB, error) {
	if len(data) == 0 {
		return nil, &FormatError{Format: f, Offset: 0, Reason: "empty file"}
	}
	if f == Auto {
		head := data
		if len(head) > DetectSize {
			head = head[:DetectSize]
		}
		var err error
		if f, err = Detect(head); err != nil {
			return nil, err
		}
	}
	var db *DB
	var err error
	switch f {
	case Twoskip:
		db, err = parseTwoskip(data, fileSize)
	case Skiplist:
		db, err = parseSkiplist(data, fileSize)
	case Flat:
		db, err = parseFlat(data, fileSize)
	default:
		return nil, &FormatError{Format: f, Offset: 0, Reason: "unsupported format " + f.String()}
	}
	if err != nil {
		return nil, err
	}
	db.Info.Format = f
	db.Info.Records = len(db.recs)
	db.rawSorted = isRawSorted(db.buf, db.recs)
	return db, nil
}

func isRawSorted(buf []byte, recs []entry) bool {
	for i := 1; i < len(recs); i++ {
		a, b := recs[i-1].k, recs[i].k
		if bytes.Compare(buf[a.off:a.off+a.n], buf[b.off:b.off+b.n]) >= 0 {
			return false
		}
	}
	return true
}
