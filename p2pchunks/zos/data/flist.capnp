# The v1 flist directory record (rfs 1 / 0-flist / 0-fs), written from the format description.
#
# An rfs 1 ``.flist`` is a tar.gz holding ``flistdb.sqlite3``; its table ``entries(key, value)`` holds one
# unpacked Cap'n Proto message per directory (root struct ``Dir``), keyed by the hex BLAKE2b-128 of the
# directory's relative path ("" for the root), and one ``ACI`` message per distinct permission set, keyed by its
# ``aclkey`` (hex BLAKE2b-64). Only field ordinals and types matter on the wire; names follow the format.

@0xe97de9f5636ae265;

struct FileBlock {
    hash @0 :Data;   # BLAKE2b-128 of the stored (encrypted) chunk: its id on the backend
    key  @1 :Data;   # BLAKE2b-128 of the plain chunk: the XXTEA key
}

struct File {
    blockSize @0 :UInt16;           # ignored by readers; chunks are 512 KiB
    blocks    @1 :List(FileBlock);  # in file order
}

struct Link {
    target @0 :Text;
}

struct Special {
    type @0 :Type;
    enum Type {
        socket   @0;
        block    @1;
        chardev  @2;
        fifopipe @3;
        unknown  @4;
    }
    data @1 :Data;   # "major,minor" for devices
}

struct SubDir {
    key @0 :Text;    # entries key of the sub-directory
}

struct Inode {
    name @0 :Text;
    size @1 :UInt64;
    attributes :union {
        dir     @2 :SubDir;
        file    @3 :File;
        link    @4 :Link;
        special @5 :Special;
    }
    aclkey           @6 :Text;
    modificationTime @7 :UInt32;
    creationTime     @8 :UInt32;
}

struct Dir {
    name             @0 :Text;
    location         @1 :Text;          # relative path, "" for the root
    contents         @2 :List(Inode);
    parent           @3 :Text;          # entries key of the parent (the root names itself)
    size             @4 :UInt64;
    aclkey           @5 :Text;
    modificationTime @6 :UInt32;
    creationTime     @7 :UInt32;
}

struct UserGroup {
    name   @0 :Text;
    iyoId  @1 :Text;
    iyoInt @2 :UInt64;
}

struct ACI {
    uname  @0 :Text;
    gname  @1 :Text;
    mode   @2 :UInt16;   # permission bits only (st_mode without the type bits)
    rights @3 :List(Right);
    struct Right {
        right       @0 :Text;
        usergroupid @1 :UInt16;
    }
    id  @4 :UInt32;
    uid @5 :Int64 = -1;
    gid @6 :Int64 = -1;
}
