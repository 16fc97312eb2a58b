//! Users in an embedded SQLite file, shared by the v1 and v2 processes (WAL mode).
//! Email uniqueness is a primary key on the lowercase address, so two concurrent creates
//! with one address cannot both succeed.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, params};
use tandem::domain::{Address, ContactChange, EmailList, UserId};
use tandem_storage::sqlite::{self, Database, SqliteError, is_unique_violation};

use super::{
    ContactUpdated, EventOrigin, OutboxEvent, OutboxLease, OutboxStats, StoreError, UserStore,
    lease_end,
};
use crate::model::User;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    user_id         TEXT PRIMARY KEY NOT NULL,
    first_name      TEXT,
    last_name       TEXT,
    phone_number    TEXT,
    emails          TEXT NOT NULL,      -- JSON array, in the client's order
    street          TEXT NOT NULL,
    city            TEXT NOT NULL,
    province        TEXT NOT NULL,
    postal_code     TEXT NOT NULL,
    country         TEXT NOT NULL,
    contact_version INTEGER NOT NULL,
    created_at      INTEGER,            -- ms since the epoch; written by v2 only
    updated_at      INTEGER
) STRICT;

-- One row per address, keyed by its lowercase form: the key makes an address belong to
-- at most one user, atomically, whatever the case it was written in.
CREATE TABLE user_emails (
    email_normalized TEXT PRIMARY KEY NOT NULL,
    user_id          TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE
) STRICT, WITHOUT ROWID;
CREATE INDEX user_emails_by_user ON user_emails (user_id);

-- user.updated events written with the change that caused them, until a relay has
-- published them and the broker confirmed.
CREATE TABLE outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL UNIQUE,
    user_id     TEXT NOT NULL,
    version     INTEGER NOT NULL,
    payload     TEXT NOT NULL,
    request_id  TEXT,
    created_at  INTEGER NOT NULL,
    lease_owner TEXT,
    lease_until INTEGER NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX outbox_due ON outbox (lease_until, seq);
"#,
    r#"
-- The W3C trace context of the change, for the message's headers.
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
ALTER TABLE outbox ADD COLUMN tracestate TEXT;
"#,
];

pub struct SqliteUserStore {
    db: Database,
}

impl SqliteUserStore {
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sqlite::open(path, MIGRATIONS)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Self { db })
    }
}

impl From<SqliteError> for StoreError {
    fn from(e: SqliteError) -> Self {
        if e.is_transient() {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Internal(e.to_string())
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        SqliteError::from(e).into()
    }
}

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn from_millis(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.and_then(DateTime::from_timestamp_millis)
}

/// One user by id, in the column order `user_from_row` reads. Every statement here goes
/// through the connection's statement cache (`prepare_cached`): preparing costs more than
/// running these one-row statements.
const SELECT_USER: &str = "SELECT user_id, first_name, last_name, phone_number, emails, street, \
     city, province, postal_code, country, contact_version, created_at, updated_at \
     FROM users WHERE user_id = ?1";

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<Result<User, StoreError>> {
    let user_id: String = row.get(0)?;
    let emails: String = row.get(4)?;
    let corrupt = |what: &str| StoreError::Internal(format!("stored user {user_id}: bad {what}"));
    let Ok(id) = UserId::parse(&user_id) else {
        return Ok(Err(corrupt("user_id")));
    };
    let Ok(emails) = serde_json::from_str::<Vec<String>>(&emails) else {
        return Ok(Err(corrupt("emails")));
    };
    Ok(Ok(User {
        user_id: id,
        first_name: row.get(1)?,
        last_name: row.get(2)?,
        phone_number: row.get(3)?,
        emails: EmailList::from_stored(emails),
        delivery_address: Address::from_stored(
            row.get(5)?,
            row.get(6)?,
            row.get(7)?,
            row.get(8)?,
            row.get(9)?,
        ),
        contact_version: row.get(10)?,
        created_at: from_millis(row.get(11)?),
        updated_at: from_millis(row.get(12)?),
    }))
}

fn load_user(conn: &Connection, user_id: &str) -> Result<Option<User>, StoreError> {
    conn.prepare_cached(SELECT_USER)?
        .query_row([user_id], user_from_row)
        .optional()?
        .transpose()
}

/// Gives each of `emails` to `user_id`; `EmailTaken` names the first that another user has.
fn claim_emails(conn: &Connection, user_id: &str, emails: &EmailList) -> Result<(), StoreError> {
    let mut insert =
        conn.prepare_cached("INSERT INTO user_emails (email_normalized, user_id) VALUES (?1, ?2)")?;
    for email in emails.as_slice() {
        match insert.execute(params![email.normalized(), user_id]) {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::EmailTaken {
                    email: email.as_str().to_owned(),
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn emails_json(emails: &EmailList) -> String {
    serde_json::to_string(&emails.to_strings()).expect("strings always serialize")
}

fn outbox_from_row(row: &Row<'_>) -> rusqlite::Result<OutboxEvent> {
    Ok(OutboxEvent {
        event_id: row.get(0)?,
        user_id: row.get(1)?,
        version: row.get(2)?,
        payload: row.get(3)?,
        origin: EventOrigin {
            request_id: row.get(4)?,
            traceparent: row.get(8)?,
            tracestate: row.get(9)?,
        },
        created_at: from_millis(row.get(5)?).unwrap_or_default(),
        attempts: row.get(6)?,
    })
}

#[async_trait]
impl UserStore for SqliteUserStore {
    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        let user = user.clone();
        self.db
            .write(move |tx| {
                let id = user.user_id.to_string();
                let a = &user.delivery_address;
                tx.prepare_cached(
                "INSERT INTO users (user_id, first_name, last_name, phone_number, emails, street, \
                 city, province, postal_code, country, contact_version, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)")?
                .execute(params![
                    id,
                    user.first_name,
                    user.last_name,
                    user.phone_number,
                    emails_json(&user.emails),
                    a.street(),
                    a.city(),
                    a.province(),
                    a.postal_code(),
                    a.country(),
                    user.contact_version,
                    user.created_at.map(millis),
                    user.updated_at.map(millis),
                ])?;
                claim_emails(tx, &id, &user.emails)?;
                Ok(())
            })
            .await
    }

    async fn get_user(&self, user_id: UserId) -> Result<Option<User>, StoreError> {
        self.db
            .read(move |conn| load_user(conn, &user_id.to_string()))
            .await
    }

    async fn update_contact(
        &self,
        user_id: UserId,
        change: &ContactChange,
        stamp: Option<DateTime<Utc>>,
        origin: EventOrigin,
        leased_to: Option<&OutboxLease>,
    ) -> Result<ContactUpdated, StoreError> {
        let change = change.clone();
        let leased_to = leased_to.cloned();
        self.db
            .write(move |tx| {
                // The write transaction holds the lock: the read below cannot go stale.
                let id = user_id.to_string();
                let current = load_user(tx, &id)?.ok_or(StoreError::NotFound)?;
                if let Some(emails) = &change.emails {
                    tx.prepare_cached("DELETE FROM user_emails WHERE user_id = ?1")?
                        .execute([&id])?;
                    claim_emails(tx, &id, emails)?;
                }
                let user = current.changed(&change, stamp);
                let a = &user.delivery_address;
                tx.prepare_cached(
                    "UPDATE users SET emails = ?2, street = ?3, city = ?4, province = ?5, \
                 postal_code = ?6, country = ?7, contact_version = ?8, updated_at = ?9 \
                 WHERE user_id = ?1",
                )?
                .execute(params![
                    id,
                    emails_json(&user.emails),
                    a.street(),
                    a.city(),
                    a.province(),
                    a.postal_code(),
                    a.country(),
                    user.contact_version,
                    user.updated_at.map(millis),
                ])?;
                let now = tandem::domain::now();
                let mut event = OutboxEvent::for_user(&user, now, origin);
                let (owner, until) = match &leased_to {
                    Some(to) => {
                        event.attempts = 1;
                        (Some(to.owner.as_str()), millis(lease_end(now, to.lease)))
                    }
                    None => (None, 0),
                };
                tx.prepare_cached(
                "INSERT INTO outbox (event_id, user_id, version, payload, request_id, created_at, \
                 traceparent, tracestate, lease_owner, lease_until, attempts) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)")?
                .execute(params![
                    event.event_id,
                    event.user_id,
                    event.version,
                    event.payload,
                    event.origin.request_id,
                    millis(event.created_at),
                    event.origin.traceparent,
                    event.origin.tracestate,
                    owner,
                    until,
                    event.attempts,
                ])?;
                Ok(ContactUpdated { user, event })
            })
            .await
    }

    async fn claim_outbox(
        &self,
        owner: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let owner = owner.to_owned();
        // Relays poll often; a plain read first keeps an empty outbox from queueing a
        // write behind the API's.
        let due: bool = self
            .db
            .read(|conn| {
                Ok::<_, StoreError>(conn.query_row(
                    "SELECT EXISTS (SELECT 1 FROM outbox WHERE lease_until <= ?1)",
                    [millis(tandem::domain::now())],
                    |row| row.get(0),
                )?)
            })
            .await?;
        if !due {
            return Ok(Vec::new());
        }
        self.db
            .write(move |tx| {
                let now = tandem::domain::now();
                let mut claim = tx.prepare_cached(
                    "UPDATE outbox SET lease_owner = ?1, lease_until = ?2, attempts = attempts + 1 \
                     WHERE seq IN (SELECT seq FROM outbox WHERE lease_until <= ?3 ORDER BY seq LIMIT ?4) \
                     RETURNING event_id, user_id, version, payload, request_id, created_at, attempts, seq, \
                     traceparent, tracestate",
                )?;
                let mut rows: Vec<(i64, OutboxEvent)> = claim
                    .query_map(
                        params![owner, millis(lease_end(now, lease)), millis(now), limit as i64],
                        |row| Ok((row.get(7)?, outbox_from_row(row)?)),
                    )?
                    .collect::<Result<_, _>>()?;
                // RETURNING gives rows in no promised order.
                rows.sort_by_key(|(seq, _)| *seq);
                Ok(rows.into_iter().map(|(_, e)| e).collect())
            })
            .await
    }

    async fn complete_outbox(&self, event_ids: &[String]) -> Result<(), StoreError> {
        let ids = event_ids.to_vec();
        self.db
            .write(move |tx| {
                let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE event_id = ?1")?;
                for id in &ids {
                    delete.execute([id])?;
                }
                Ok(())
            })
            .await
    }

    async fn release_outbox(&self, owner: &str, event_ids: &[String]) -> Result<(), StoreError> {
        let ids = event_ids.to_vec();
        let owner = owner.to_owned();
        self.db
            .write(move |tx| {
                let mut release = tx.prepare_cached(
                    "UPDATE outbox SET lease_owner = NULL, lease_until = 0 \
                     WHERE event_id = ?1 AND lease_owner = ?2",
                )?;
                for id in &ids {
                    release.execute(params![id, owner])?;
                }
                Ok(())
            })
            .await
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        self.db
            .read(|conn| {
                let (pending, oldest): (i64, Option<i64>) =
                    conn.query_row("SELECT count(*), min(created_at) FROM outbox", [], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })?;
                Ok(OutboxStats {
                    pending: pending.max(0) as u64,
                    oldest: from_millis(oldest),
                })
            })
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db
            .read(|conn| {
                conn.query_row("SELECT 1", [], |_| Ok(()))?;
                Ok(())
            })
            .await
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.db.register_metrics(registry);
    }
}
