//! What user-svc and order-svc share about MongoDB: connecting (fail fast and say why),
//! creating collections with their `$jsonSchema` validators, and telling a duplicate key
//! or an outage apart from a bug.

use std::time::Duration;

use chrono::{DateTime, Utc};
use mongodb::bson::{Bson, DateTime as BsonDateTime, Document, doc};
use mongodb::error::{Error, ErrorKind, WriteFailure};
use mongodb::options::ClientOptions;
use mongodb::{Client, Database};
use tandem::domain::Address;

/// MongoDB's code for a unique index refusing a document.
const DUPLICATE_KEY: i32 = 11000;
/// "collection already exists": another process created it first.
const NAMESPACE_EXISTS: i32 = 48;

/// How an error from MongoDB should reach a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A unique index refused the write.
    DuplicateKey,
    /// The server could not be reached, or the operation may succeed if tried again.
    Unavailable(String),
    /// Anything else: a bug or a broken invariant.
    Internal(String),
}

/// MongoDB's code for two transactions writing one document.
const WRITE_CONFLICT: i32 = 112;

/// Whether a transaction lost a race with another writer and can simply run again.
/// MongoDB labels these TransientTransactionError (the driver then retries by itself);
/// the MongoDB-wire test server reports them without the label, so look at the code and
/// message too.
pub fn is_write_conflict(err: &Error) -> bool {
    err.contains_label("TransientTransactionError")
        || code(err) == Some(WRITE_CONFLICT)
        || err.to_string().contains("Write conflict")
}

pub fn classify(err: &Error) -> Failure {
    if code(err) == Some(DUPLICATE_KEY) {
        return Failure::DuplicateKey;
    }
    let transient = is_write_conflict(err)
        || err.contains_label("RetryableWriteError")
        || matches!(
            err.kind.as_ref(),
            ErrorKind::Io(_)
                | ErrorKind::ServerSelection { .. }
                | ErrorKind::ConnectionPoolCleared { .. }
        );
    if transient {
        Failure::Unavailable(err.to_string())
    } else {
        Failure::Internal(err.to_string())
    }
}

fn code(err: &Error) -> Option<i32> {
    match err.kind.as_ref() {
        ErrorKind::Command(e) => Some(e.code),
        ErrorKind::Write(WriteFailure::WriteError(e)) => Some(e.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(e)) => Some(e.code),
        ErrorKind::InsertMany(e) => e
            .write_errors
            .as_ref()
            .and_then(|errors| errors.first())
            .map(|e| e.code),
        _ => None,
    }
}

/// Connects and checks the server answers within a few seconds, so a wrong URI fails at
/// start-up with one line rather than at the first request. The database is the one the
/// URI names (`mongodb://host/mydb`), `default_db` otherwise.
pub async fn connect(
    uri: &str,
    app_name: &str,
    default_db: &str,
) -> Result<(Client, Database), Error> {
    let mut options = ClientOptions::parse(uri).await?;
    options.app_name = Some(app_name.to_owned());
    options
        .server_selection_timeout
        .get_or_insert(Duration::from_secs(5));
    options
        .connect_timeout
        .get_or_insert(Duration::from_secs(5));
    let client = Client::with_options(options)?;
    let db = client
        .default_database()
        .unwrap_or_else(|| client.database(default_db));
    db.run_command(doc! { "ping": 1 }).await?;
    Ok((client, db))
}

/// Creates `name` with `validator` ({"$jsonSchema": …}), or brings the validator of an
/// existing collection up to date.
pub async fn ensure_collection(
    db: &Database,
    name: &str,
    validator: Document,
) -> Result<(), Error> {
    let exists = db
        .list_collection_names()
        .filter(doc! { "name": name })
        .await?
        .iter()
        .any(|n| n == name);
    if !exists {
        match db
            .create_collection(name)
            .validator(validator.clone())
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) if code(&e) == Some(NAMESPACE_EXISTS) => {}
            Err(e) => return Err(e),
        }
    }
    db.run_command(doc! { "collMod": name, "validator": validator })
        .await?;
    Ok(())
}

/// A `$jsonSchema` for a delivery address: five required strings.
pub fn address_schema() -> Document {
    doc! {
        "bsonType": "object",
        "required": ["street", "city", "province", "postalCode", "country"],
        "properties": {
            "street": { "bsonType": "string" },
            "city": { "bsonType": "string" },
            "province": { "bsonType": "string" },
            "postalCode": { "bsonType": "string" },
            "country": { "bsonType": "string" },
        },
    }
}

/// A `$jsonSchema` for a non-empty list of emails.
pub fn emails_schema() -> Document {
    doc! {
        "bsonType": "array",
        "minItems": 1,
        "items": { "bsonType": "string" },
    }
}

/// A UTC instant as a BSON date (millisecond precision, as every tandem store keeps).
pub fn bson_date(at: DateTime<Utc>) -> BsonDateTime {
    BsonDateTime::from_millis(at.timestamp_millis())
}

/// The instant a BSON date holds.
pub fn from_bson_date(at: BsonDateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(at.timestamp_millis())
}

/// An address as both stores' documents hold it (`deliveryAddress`).
pub fn address_doc(a: &Address) -> Document {
    doc! {
        "street": a.street(),
        "city": a.city(),
        "province": a.province(),
        "postalCode": a.postal_code(),
        "country": a.country(),
    }
}

/// Reads an address written by [`address_doc`].
pub fn address_from_doc(d: &Document) -> Result<Address, String> {
    let part = |key: &str| {
        d.get_str(key)
            .map(str::to_owned)
            .map_err(|e| format!("deliveryAddress.{key}: {e}"))
    };
    Ok(Address::from_stored(
        part("street")?,
        part("city")?,
        part("province")?,
        part("postalCode")?,
        part("country")?,
    ))
}

/// Reads an integer stored as Int64 or Int32 (some servers narrow `$inc` results).
pub fn integer(value: Option<&Bson>) -> Option<i64> {
    match value? {
        Bson::Int64(v) => Some(*v),
        Bson::Int32(v) => Some(i64::from(*v)),
        _ => None,
    }
}
