-- The durable record. Redis serves the hot path; this is what it can be
-- rebuilt from. See docs/database.md for why each table and index exists.

CREATE TABLE books (
    id                       uuid        PRIMARY KEY,
    num                      integer     NOT NULL UNIQUE,   -- the number in Redis keys
    name                     text        NOT NULL,
    description              text        NOT NULL DEFAULT '',
    multiple_redeems_allowed boolean     NOT NULL DEFAULT false,
    max_redeems_per_code     integer,                       -- NULL: no limit
    max_per_user             integer,                       -- NULL: no limit
    lock_ttl_ms              integer     NOT NULL,
    valid_from               timestamptz,
    valid_until              timestamptz,
    created_at               timestamptz NOT NULL
);

-- One row per code, written when the code is uploaded or generated; the
-- writer then keeps owner and redemption state current (highest version wins).
-- Bulk loads of a million codes are the hot spot here, so: codes compare as
-- bytes (COLLATE "C": they are ASCII, and locale-aware comparison made every
-- index insert slower), and book_id has no foreign key (its per-row trigger
-- cost as much as the insert itself; `couponsvc verify` reports orphans).
CREATE TABLE codes (
    code             text        COLLATE "C" PRIMARY KEY,    -- unique across all books
    book_id          uuid        NOT NULL,
    owner            text,                                   -- NULL while free
    assigned_at      timestamptz,
    times_redeemed   integer     NOT NULL DEFAULT 0,
    last_redeemed_at timestamptz,
    version          integer     NOT NULL DEFAULT 0,         -- the code's version in Redis
    added_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX codes_book_idx ON codes (book_id);
CREATE INDEX codes_owner_idx ON codes (owner, book_id) WHERE owner IS NOT NULL;

-- Append-only audit trail: every outbox event, once (its stream id is unique
-- within its book's stream).
CREATE TABLE events (
    book_id   uuid        NOT NULL,
    stream_id text        NOT NULL,                          -- Redis stream entry id
    type      text        NOT NULL,
    code      text,
    user_id   text,
    at        timestamptz NOT NULL,
    version   integer     NOT NULL,
    detail    jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (book_id, stream_id)
);
CREATE INDEX events_code_idx ON events (code, at) WHERE code IS NOT NULL;
CREATE INDEX events_user_idx ON events (user_id, at) WHERE user_id IS NOT NULL;

-- Events the writer could not apply after several attempts, for an operator.
-- Plain text columns on purpose: a malformed entry (a book that is no uuid, a
-- NUL byte) must still be storable here, or it would block its stream.
CREATE TABLE parked_events (
    stream     text        NOT NULL,                          -- the Redis stream key
    stream_id  text        NOT NULL,
    book_id    text        NOT NULL,                          -- as the entry gave it
    fields     text        NOT NULL,                          -- the entry, as JSON
    error      text        NOT NULL,
    attempts   integer     NOT NULL,
    parked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, stream_id)
);
CREATE INDEX parked_events_book_idx ON parked_events (book_id);
