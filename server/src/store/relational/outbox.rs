//! Notices waiting for delivery. Every domain queues its notices here in
//! the transaction of the event they report; the relay's deliverer claims
//! them, and records each delivery or failure.

use crate::store::{
    notice::Notice,
    sql::{args, Row, Tx},
    OutboxRow, StoreError, UnixTime,
};

/// Queues a notice in the same transaction as the event it reports, so a
/// notice exists exactly when its event does (SPEC B2).
pub(in crate::store) fn enqueue(
    tx: &mut dyn Tx,
    notice: &Notice,
    now: UnixTime,
) -> Result<(), StoreError> {
    for (channel, recipient) in &notice.to {
        tx.exec(
            "INSERT INTO outbox (channel, recipient, subject, body, created_at, next_attempt_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            args![
                channel.as_str(),
                recipient,
                &notice.subject,
                &notice.body,
                now
            ],
        )?;
    }
    Ok(())
}

/// Queues a notice that names the host's owner (every notice but the
/// admin's is addressed to them).
pub(super) fn enqueue_for_owner(
    tx: &mut dyn Tx,
    host_id: i64,
    now: UnixTime,
    notice: impl FnOnce(&str) -> Notice,
) -> Result<(), StoreError> {
    let owner = owner_of(tx, host_id)?;
    enqueue(tx, &notice(&owner), now)
}

fn owner_of(tx: &mut dyn Tx, host_id: i64) -> Result<String, StoreError> {
    tx.row(
        "SELECT u.name FROM hosts h JOIN users u ON u.id = h.owner_id WHERE h.id = ?1",
        args![host_id],
    )?
    .text(0)
}

/// Reads `id, channel, recipient, subject, body, attempts, state, last_error`.
fn outbox_row(r: &Row) -> Result<OutboxRow, StoreError> {
    Ok(OutboxRow {
        id: r.int(0)?,
        channel: r.text(1)?,
        recipient: r.text(2)?,
        subject: r.text(3)?,
        body: r.text(4)?,
        attempts: r.u32(5)?,
        state: r.text(6)?,
        last_error: r.opt_text(7)?,
    })
}

/// Claims up to `limit` due notices until `claimed_until`, oldest first.
pub(super) fn claim(
    tx: &mut dyn Tx,
    now: UnixTime,
    claimed_until: UnixTime,
    limit: usize,
) -> Result<Vec<OutboxRow>, StoreError> {
    // A claim moves the notice's next attempt to the claim's end, in a
    // write transaction: two relays claiming at once are serialized
    // (PostgreSQL retries the one that conflicts), so each notice is
    // given to one of them.
    let mut claimed = tx
        .rows(
            "UPDATE outbox SET next_attempt_at = ?2
             WHERE id IN (SELECT id FROM outbox
                          WHERE state = 'pending' AND next_attempt_at <= ?1
                          ORDER BY id LIMIT ?3)
             RETURNING id, channel, recipient, subject, body, attempts, state, last_error",
            args![now, claimed_until, i64::try_from(limit).unwrap_or(i64::MAX)],
        )?
        .iter()
        .map(outbox_row)
        .collect::<Result<Vec<_>, _>>()?;
    claimed.sort_by_key(|n| n.id);
    Ok(claimed)
}

/// Marks a notice `sent` or `stored`.
pub(super) fn done(tx: &mut dyn Tx, id: i64, state: &str, now: UnixTime) -> Result<(), StoreError> {
    tx.exec(
        "UPDATE outbox SET state = ?1, sent_at = ?2, attempts = attempts + 1 WHERE id = ?3",
        args![state, now, id],
    )?;
    Ok(())
}

/// Records a failed delivery and when to try again.
pub(super) fn retry(
    tx: &mut dyn Tx,
    id: i64,
    error: &str,
    next_attempt_at: UnixTime,
) -> Result<(), StoreError> {
    tx.exec(
        "UPDATE outbox SET attempts = attempts + 1, last_error = ?1, next_attempt_at = ?2 WHERE id = ?3",
        args![error, next_attempt_at, id],
    )?;
    Ok(())
}

/// The newest `limit` notices, oldest first.
pub(super) fn list(tx: &mut dyn Tx, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
    let mut out = tx
        .rows(
            "SELECT id, channel, recipient, subject, body, attempts, state, last_error FROM outbox
             ORDER BY id DESC LIMIT ?1",
            args![i64::try_from(limit).unwrap_or(i64::MAX)],
        )?
        .iter()
        .map(outbox_row)
        .collect::<Result<Vec<_>, _>>()?;
    out.reverse();
    Ok(out)
}
