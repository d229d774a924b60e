//! Reading beyond the current version: vread, history and search by patient, each decided by
//! consent and audited like a read.

use sharedcare_kit::access::Outcome;
use sharedcare_kit::edge::Refuse;
use sharedcare_kit::pdp::PdpError;
use std::collections::HashMap;

use prost::Message;
use sharedcare_proto::consent::v1::DecideResponse;
use sharedcare_proto::consent::v1::decide_response::Effect;
use sharedcare_proto::events::v1::AccessRecorded;
use sqlx::Row;

use super::decide::{Asks, stored_labels, verdict};
use super::{Actor, Caller, Engine, Store, Stored, Verdict};
use crate::RecordsError;
use crate::consent;
use crate::fhir;

/// A stored version from a `SELECT resource_type, id, version, last_updated_us, nhs_number,
/// body` row, with its `labels`, `codes` and `deleted` columns when the query has them: the
/// categories consent decides on are its labels, its class and its codes.
pub(super) fn stored_row(row: &sqlx::any::AnyRow) -> Result<Stored, sqlx::Error> {
    let resource_type: String = row.try_get(0)?;
    let labels = row.try_get::<String, _>("labels").ok().map(|l| {
        let labels = l.split(',').filter(|x| !x.is_empty()).map(str::to_string);
        let codes = row.try_get::<String, _>("codes").unwrap_or_default();
        sharedcare_kit::pdp::categories(&resource_type, labels, codes.split_whitespace())
    });
    Ok(Stored {
        resource_type,
        id: row.try_get(1)?,
        version: row.try_get(2)?,
        last_updated_us: row.try_get(3)?,
        nhs_number: row.try_get(4)?,
        body: row.try_get(5)?,
        labels,
        deleted: row.try_get::<i64, _>("deleted").is_ok_and(|d| d != 0),
        unchanged: false,
    })
}

/// Most results in one page of history or search.
pub const MAX_PAGE: usize = 500;
/// Results in a page when the caller names no size.
pub const DEFAULT_PAGE: usize = 50;

/// A page of history or search results.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The resources (versions) the caller may see.
    pub items: Vec<Stored>,
    /// Where the next page starts; empty on the last.
    pub next_cursor: String,
    /// The patient withholds some categories from this caller (independent of the record).
    pub some_withheld: bool,
}

/// A search of one patient's current resources.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// The patient's NHS number (already checked), or empty when `patient` names them.
    pub nhs_number: String,
    /// A Patient resource id.
    pub patient: String,
    /// Resource types; empty = all.
    pub types: Vec<String>,
    /// Clinical date range, inclusive (µs).
    pub date_from: Option<i64>,
    /// End of the range.
    pub date_to: Option<i64>,
    /// When the current version was stored (`_lastUpdated`), inclusive (µs).
    pub updated_from: Option<i64>,
    /// End of that range.
    pub updated_to: Option<i64>,
    /// `system|code` or `code`.
    pub code: String,
    /// 1..=MAX_PAGE.
    pub page_size: usize,
    /// Where the previous page ended: `type/id` of its last resource, after its sort value
    /// and `~` when sorted (`{value}~type/id`).
    pub cursor: String,
    /// The order: by resource type and id (the default), or by clinical date or last update,
    /// oldest or newest first.
    pub sort: Sort,
}

/// A search's order (FHIR `_sort`), each with resource type and id breaking ties.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sort {
    /// Resource type, then id.
    #[default]
    Id,
    /// `_id` descending.
    IdDesc,
    /// The clinical date (`date`), oldest first (resources without one first).
    Date,
    /// `-date`.
    DateDesc,
    /// When the current version was stored (`_lastUpdated`).
    Updated,
    /// `-_lastUpdated`.
    UpdatedDesc,
}

impl Sort {
    /// Parses a `_sort` value given as `field`; the error names it and says what is supported.
    pub fn parse(field: &str, v: &str) -> Result<Sort, RecordsError> {
        let unsupported = |why: String| RecordsError::invalid(field, why);
        Ok(match v {
            "" | "_id" => Sort::Id,
            "-_id" => Sort::IdDesc,
            "date" => Sort::Date,
            "-date" => Sort::DateDesc,
            "_lastUpdated" => Sort::Updated,
            "-_lastUpdated" => Sort::UpdatedDesc,
            other if other.contains(',') => return Err(unsupported(format!("{other:?}: one sort key is supported"))),
            other => {
                return Err(unsupported(format!(
                    "{other:?} is not supported (date, _lastUpdated or _id, each with - for descending)"
                )));
            }
        })
    }

    /// The column sorted on (beyond type and id), and whether descending.
    fn column(self) -> (Option<&'static str>, bool) {
        match self {
            Sort::Id => (None, false),
            Sort::IdDesc => (None, true),
            Sort::Date => (Some("c.clinical_date_us"), false),
            Sort::DateDesc => (Some("c.clinical_date_us"), true),
            Sort::Updated => (Some("r.last_updated_us"), false),
            Sort::UpdatedDesc => (Some("r.last_updated_us"), true),
        }
    }
}

/// The cursor after `s`, whose sort value is `key`.
fn cursor_after(sort: Sort, key: i64, s: &Stored) -> String {
    match sort.column().0 {
        None => format!("{}/{}", s.resource_type, s.id),
        Some(_) => format!("{key}~{}/{}", s.resource_type, s.id),
    }
}

/// A cursor's parts: sort value (0 when unsorted), type and id; `None` when it is not one.
pub fn parse_cursor(cursor: &str) -> Option<(i64, &str, &str)> {
    let (key, rest) = match cursor.split_once('~') {
        Some((k, rest)) => (k.parse::<i64>().ok()?, rest),
        None => (0, cursor),
    };
    let (t, id) = rest.split_once('/')?;
    Some((key, t, id))
}

/// What consent said about a set of label sets, plus the whole-record notice ask.
struct Judged {
    /// Decision per label set, by the set's position.
    decisions: Vec<DecideResponse>,
    /// The decision for every sensitive label at once: whole-record deny, or the notice.
    overall: DecideResponse,
}

impl Judged {
    fn effect(d: &DecideResponse) -> Effect {
        Effect::try_from(d.effect).unwrap_or(Effect::Unspecified)
    }

    /// Whether data labelled like set `i` may be shown.
    fn shows(&self, i: usize, labels: &[String]) -> bool {
        let Some(d) = self.decisions.get(i) else {
            return false; // no decision: nothing shown
        };
        match Judged::effect(d) {
            Effect::Permit => true,
            Effect::PermitWithWithholding => !d.withheld_categories.iter().any(|c| labels.contains(c)),
            Effect::Deny | Effect::Unspecified => false,
        }
    }

    fn denied(&self) -> bool {
        matches!(Judged::effect(&self.overall), Effect::Deny | Effect::Unspecified)
    }

    fn notice(&self) -> bool {
        Judged::effect(&self.overall) == Effect::PermitWithWithholding
    }

    fn purpose_and_reason(&self, purpose: &str) -> (String, String) {
        let d = &self.overall;
        let why = format!("{} [{}]", d.reason, d.rules.join(", "));
        if d.break_glass {
            ("BTG".into(), format!("break-glass: {}; {why}", d.break_glass_reason))
        } else {
            (purpose.to_string(), why)
        }
    }
}

impl Store {
    /// Reads version `version` of `resource_type/id`, decided and audited like [`Store::get`].
    pub async fn vread(
        &self,
        resource_type: &str,
        id: &str,
        version: i64,
        actor: &Actor,
    ) -> Result<Stored, RecordsError> {
        let e = &self.engine;
        let caller = Caller::current(actor);
        let reference = format!("{resource_type}/{id}/_history/{version}");
        let row = sqlx::query(
            "SELECT resource_type, id, version, last_updated_us, nhs_number, body, deleted FROM resources \
             WHERE resource_type = $1 AND id = $2 AND version = $3",
        )
        .bind(resource_type.to_string())
        .bind(id.to_string())
        .bind(version)
        .fetch_optional(e.db.pool())
        .await
        .map_err(|err| RecordsError::Unavailable(err.to_string()))?;
        let purpose = actor.purpose.as_str();
        let (v, nhs) = match row.as_ref().map(stored_row).transpose()? {
            None => (Verdict::not_found(&reference, purpose), String::new()),
            // The version that deleted the resource: nothing of it is read.
            Some(s) if s.deleted => {
                let gone = RecordsError::Gone(reference.clone());
                (
                    Verdict::refused(gone, Outcome::NotFound, purpose, "deleted".into()),
                    s.nhs_number,
                )
            }
            Some(s) if !fhir::is_patient_data(&s.resource_type) => {
                let nhs = s.nhs_number.clone();
                let t = s.resource_type.clone();
                (super::decide::directory_verdict(&t, actor, s), nhs)
            }
            Some(s) => {
                let labels = stored_labels(&s);
                let mut asks = Asks::default();
                let i = asks.add(consent::ask(actor, &s.nhs_number, "vread", labels.clone()));
                let decisions = asks.decide(e.pdp.as_ref()).await;
                let nhs = s.nhs_number.clone();
                (verdict(&decisions, i, purpose, &labels, s), nhs)
            }
        };
        e.settle(&caller, "vread", vec![reference], &nhs, v).await
    }

    /// Every version of `resource_type/id`, newest first, from below version `cursor` (empty
    /// = the newest). Denied as a whole when consent denies the record; versions with a
    /// withheld category are left out.
    pub async fn history(
        &self,
        resource_type: &str,
        id: &str,
        page_size: usize,
        cursor: &str,
        actor: &Actor,
    ) -> Result<Page, RecordsError> {
        let e = &self.engine;
        let caller = Caller::current(actor);
        let below: i64 = if cursor.is_empty() {
            i64::MAX
        } else {
            cursor
                .parse()
                .map_err(|_| RecordsError::invalid("cursor", "not a cursor from a previous page"))?
        };
        let rows = sqlx::query(
            "SELECT resource_type, id, version, last_updated_us, nhs_number, body, deleted FROM resources \
             WHERE resource_type = $1 AND id = $2 AND version < $3 ORDER BY version DESC LIMIT $4",
        )
        .bind(resource_type.to_string())
        .bind(id.to_string())
        .bind(below)
        .bind((page_size + 1) as i64)
        .fetch_all(e.db.pool())
        .await
        .map_err(|err| RecordsError::Unavailable(err.to_string()))?;
        let mut versions: Vec<Stored> = rows.iter().map(stored_row).collect::<Result<_, _>>()?;
        let reference = format!("{resource_type}/{id}");
        let purpose = actor.purpose.as_str();
        if versions.is_empty() {
            let v = Verdict::not_found(&reference, purpose);
            return e.settle(&caller, "history", vec![reference], "", v).await;
        }
        let more = versions.len() > page_size;
        versions.truncate(page_size);
        let next_cursor = if more {
            versions.last().map(|s| s.version.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        let nhs = versions.first().map(|s| s.nhs_number.clone()).unwrap_or_default();
        let v = if fhir::is_patient_data(resource_type) {
            e.judge_page(actor, &nhs, "history", versions, purpose).await
        } else {
            super::decide::directory_verdict(resource_type, actor, (versions, false))
        };
        let refs = match &v.answer {
            Ok((items, _)) => items
                .iter()
                .map(|s| format!("{}/{}/_history/{}", s.resource_type, s.id, s.version))
                .collect(),
            Err(_) => vec![reference],
        };
        let (items, some_withheld) = e.settle(&caller, "history", refs, &nhs, v).await?;
        Ok(Page {
            items,
            next_cursor,
            some_withheld,
        })
    }

    /// One patient's current resources matching `q`, a page at a time. The page is filled
    /// past withheld resources, so its length says nothing about what was left out.
    pub async fn search(&self, q: &Query, actor: &Actor) -> Result<Page, RecordsError> {
        let e = &self.engine;
        let caller = Caller::current(actor);
        let purpose = actor.purpose.as_str();
        // A merged person's data is found through either NHS number: the whole group's (the
        // survivor first), found with the Patient in one statement. The search is audited as
        // the number asked about.
        let (nhs, group) = if q.nhs_number.is_empty() {
            match e.group_of_patient(&q.patient).await? {
                Some(found) => found,
                None => {
                    let reference = format!("Patient/{}", q.patient);
                    let v = Verdict::not_found(&reference, purpose);
                    return e.settle(&caller, "search", vec![reference], "", v).await;
                }
            }
        } else {
            (q.nhs_number.clone(), e.group(&q.nhs_number).await?)
        };
        // Read a page and one more, judge it, and read on only while withheld resources leave
        // the page short (at most eight rounds).
        let mut cursor = q.cursor.clone();
        let mut keys: HashMap<(String, String), i64> = HashMap::new();
        let mut items: Vec<Stored> = Vec::new();
        let mut notice = false;
        let mut full = false;
        let mut judged: Option<(Outcome, String, String)> = None;
        for _round in 0..8 {
            let want = q.page_size + 1 - items.len();
            let keyed = e.search_rows(&group, q, &cursor, want).await?;
            full = keyed.len() == want;
            if let Some((last, key)) = keyed.last() {
                cursor = cursor_after(q.sort, *key, last);
            }
            let rows: Vec<Stored> = keyed.iter().map(|(s, _)| s.clone()).collect();
            keys.extend(keyed.into_iter().map(|(s, k)| ((s.resource_type, s.id), k)));
            let v = e.judge_page(actor, &nhs, "search", rows, purpose).await;
            match v.answer {
                Ok((shown, withheld)) => {
                    items.extend(shown);
                    notice |= withheld;
                    // Keep the reason that says what was withheld, if a round withheld anything.
                    if judged.as_ref().is_none_or(|(_, _, r)| !r.starts_with("withheld")) {
                        judged = Some((v.outcome, v.purpose, v.reason));
                    }
                }
                Err(err) => {
                    let v = Verdict {
                        answer: Err(err),
                        outcome: v.outcome,
                        purpose: v.purpose,
                        reason: v.reason,
                    };
                    return e.settle(&caller, "search", Vec::new(), &nhs, v).await;
                }
            }
            if items.len() > q.page_size || !full {
                break;
            }
        }
        let next_cursor = if items.len() > q.page_size {
            items.truncate(q.page_size);
            items
                .last()
                .map(|s| {
                    let key = keys.get(&(s.resource_type.clone(), s.id.clone())).copied().unwrap_or(0);
                    cursor_after(q.sort, key, s)
                })
                .unwrap_or_default()
        } else if full {
            // Eight rounds were mostly withheld: the next page carries on after them.
            cursor
        } else {
            String::new()
        };
        let (outcome, purpose, reason) = judged.unwrap_or((Outcome::Success, purpose.to_string(), String::new()));
        let v = Verdict {
            answer: Ok((items, notice)),
            outcome,
            purpose,
            reason,
        };
        let refs = match &v.answer {
            Ok((items, _)) => items.iter().map(|s| format!("{}/{}", s.resource_type, s.id)).collect(),
            Err(_) => Vec::new(),
        };
        let (items, some_withheld) = e.settle(&caller, "search", refs, &nhs, v).await?;
        Ok(Page {
            items,
            next_cursor,
            some_withheld,
        })
    }
}

impl Engine {
    /// Records an access durably, then hands back its answer; without the audit entry the
    /// caller gets an error, never the data.
    pub(super) async fn settle<T>(
        &self,
        caller: &Caller,
        action: &str,
        resources: Vec<String>,
        nhs: &str,
        v: Verdict<T>,
    ) -> Result<T, RecordsError> {
        let first = resources.first().cloned().unwrap_or_default();
        let mut env = self.access(caller, action, &first, nhs, &v);
        if resources.len() != 1 {
            let mut event = AccessRecorded::decode(env.data.as_slice()).unwrap_or_default();
            event.resources = resources;
            env.data = event.encode_to_vec();
        }
        self.outbox
            .record(&self.topic, env)
            .await
            .map_err(|e| RecordsError::Audit(e.to_string()))?;
        v.answer
    }

    /// Asks consent once about a page of one patient's data: each distinct label set, plus all
    /// sensitive labels at once (whole-record deny, and whether to tell the caller something may
    /// be withheld). Returns the items the caller may see and that notice.
    async fn judge_page(
        &self,
        actor: &Actor,
        nhs: &str,
        action: &str,
        items: Vec<Stored>,
        purpose: &str,
    ) -> Verdict<(Vec<Stored>, bool)> {
        let mut asks = Asks::default();
        let all: Vec<String> = fhir::SENSITIVE_LABELS.iter().map(|l| l.to_string()).collect();
        let overall = asks.add(consent::ask(actor, nhs, action, all));
        // Each item is decided as its own person's data (a merged person's items differ in NHS
        // number only until consent has heard of the merge, when they decide alike).
        let labelled: Vec<(Vec<String>, usize)> = items
            .iter()
            .map(|s| {
                let labels = stored_labels(s);
                let i = asks.add(consent::ask(actor, &s.nhs_number, action, labels.clone()));
                (labels, i)
            })
            .collect();
        let decisions = match asks.decide(self.pdp.as_ref()).await {
            Ok(d) => d,
            Err(e) => return Verdict::no_decision(&e, purpose),
        };
        let Some(overall) = decisions.get(overall).cloned() else {
            return Verdict::no_decision(
                &PdpError::Incomplete {
                    got: decisions.len(),
                    asked: overall + 1,
                },
                purpose,
            );
        };
        let judged = Judged { overall, decisions };
        let (purpose, reason) = judged.purpose_and_reason(purpose);
        if judged.denied() {
            let why = judged.overall.reason.clone();
            return Verdict::refused(RecordsError::Denied(why), Outcome::Denied, &purpose, reason);
        }
        let mut hidden: Vec<String> = Vec::new();
        let mut shown = Vec::with_capacity(items.len());
        for (s, (labels, i)) in items.into_iter().zip(labelled) {
            if judged.shows(i, &labels) {
                shown.push(s);
            } else {
                if labels.is_empty() {
                    hidden.push("uncategorised".into());
                }
                hidden.extend(labels);
            }
        }
        hidden.sort();
        hidden.dedup();
        let notice = judged.notice() || !hidden.is_empty();
        let reason = if hidden.is_empty() {
            reason
        } else {
            format!("withheld {}; {reason}", hidden.join(", "))
        };
        Verdict {
            answer: Ok((shown, notice)),
            outcome: Outcome::Success,
            purpose,
            reason,
        }
    }

    /// Up to `limit` current resources of the NHS numbers `group` (one person's) matching `q`
    /// after `cursor`, in `q.sort` order, each with its sort value.
    async fn search_rows(
        &self,
        group: &[String],
        q: &Query,
        cursor: &str,
        limit: usize,
    ) -> Result<Vec<(Stored, i64)>, RecordsError> {
        let (column, desc) = q.sort.column();
        let mut conn = self
            .db
            .pool()
            .acquire()
            .await
            .map_err(|e| RecordsError::Unavailable(e.to_string()))?;
        let mut n = 0;
        let backend = self.db.backend();
        let mut mark = || {
            n += 1;
            backend.placeholder(n)
        };
        let mut sql = format!(
            "SELECT r.resource_type, r.id, r.version, r.last_updated_us, r.nhs_number, r.body, c.labels, c.codes, \
                    {} AS sort_key \
             FROM current_resources c JOIN resources r \
               ON r.resource_type = c.resource_type AND r.id = c.id AND r.version = c.version \
             WHERE c.nhs_number IN ({}) AND c.deleted = 0",
            column.unwrap_or("0"),
            group.iter().map(|_| mark()).collect::<Vec<_>>().join(", ")
        );
        let mut binds: Vec<Bind> = group.iter().cloned().map(Bind::Text).collect();
        if !q.types.is_empty() {
            let marks: Vec<String> = q.types.iter().map(|_| mark()).collect();
            sql.push_str(&format!(" AND c.resource_type IN ({})", marks.join(", ")));
            binds.extend(q.types.iter().cloned().map(Bind::Text));
        }
        if q.date_from.is_some() || q.date_to.is_some() {
            sql.push_str(&format!(
                " AND c.clinical_date_us <> 0 AND c.clinical_date_us >= {} AND c.clinical_date_us <= {}",
                mark(),
                mark()
            ));
            binds.push(Bind::Int(q.date_from.unwrap_or(i64::MIN + 1)));
            binds.push(Bind::Int(q.date_to.unwrap_or(i64::MAX)));
        }
        if q.updated_from.is_some() || q.updated_to.is_some() {
            sql.push_str(&format!(
                " AND r.last_updated_us >= {} AND r.last_updated_us <= {}",
                mark(),
                mark()
            ));
            binds.push(Bind::Int(q.updated_from.unwrap_or(i64::MIN + 1)));
            binds.push(Bind::Int(q.updated_to.unwrap_or(i64::MAX)));
        }
        if !q.code.is_empty() {
            // "system|code" matches that token; a bare code matches it in any system.
            let pattern = if q.code.contains('|') {
                format!("% {} %", like_escape(&q.code))
            } else {
                format!("%|{} %", like_escape(&q.code))
            };
            sql.push_str(&format!(" AND c.codes LIKE {} ESCAPE '!'", mark()));
            binds.push(Bind::Text(pattern));
        }
        let (after, dir) = if desc { ("<", "DESC") } else { (">", "ASC") };
        if let Some((key, t, id)) = parse_cursor(cursor) {
            // Placeholders are taken, and values bound, in the order they appear in the text
            // (SQLite's are positional).
            let sorted = column.map(|col| {
                binds.extend([Bind::Int(key), Bind::Int(key)]);
                (col, mark(), mark())
            });
            let (a, b, c) = (mark(), mark(), mark());
            binds.extend([Bind::Text(t.into()), Bind::Text(t.into()), Bind::Text(id.into())]);
            let by_id = format!("(c.resource_type {after} {a} OR (c.resource_type = {b} AND c.id {after} {c}))");
            match sorted {
                None => sql.push_str(&format!(" AND {by_id}")),
                Some((col, k1, k2)) => {
                    sql.push_str(&format!(" AND ({col} {after} {k1} OR ({col} = {k2} AND {by_id}))"))
                }
            }
        }
        let order = match column {
            None => format!("c.resource_type {dir}, c.id {dir}"),
            Some(col) => format!("{col} {dir}, c.resource_type {dir}, c.id {dir}"),
        };
        sql.push_str(&format!(" ORDER BY {order} LIMIT {}", mark()));
        binds.push(Bind::Int(limit as i64));
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in binds {
            query = match b {
                Bind::Text(t) => query.bind(t),
                Bind::Int(i) => query.bind(i),
            };
        }
        let rows = query
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| RecordsError::Unavailable(e.to_string()))?;
        Ok(rows
            .iter()
            .map(|row| Ok((stored_row(row)?, row.try_get::<i64, _>("sort_key").unwrap_or(0))))
            .collect::<Result<_, sqlx::Error>>()?)
    }
}

/// A bind value of a query built at run time.
pub(super) enum Bind {
    Text(String),
    Int(i64),
}

/// Escapes `%`, `_` and the escape character for `LIKE … ESCAPE '!'`.
pub(super) fn like_escape(s: &str) -> String {
    s.replace('!', "!!").replace('%', "!%").replace('_', "!_")
}
