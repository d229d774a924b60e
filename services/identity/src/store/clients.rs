//! The `clients` table: registered OAuth clients.

use sharedcare_kit::edge::Refuse;
use sqlx::Row;

use super::{Store, conflict, json};
use crate::error::{IdentityError, Result};
use crate::model::{Client, ClientSettings};

/// A client's settings as stored (JSON).
fn settings_json(c: &Client) -> Result<String> {
    serde_json::to_string(&c.settings).map_err(|e| IdentityError::invalid("settings", e.to_string()))
}

/// The one INSERT of a client row.
async fn insert_row<'c, E: sqlx::Executor<'c, Database = sqlx::Any>>(to: E, c: &Client) -> Result<()> {
    sqlx::query("INSERT INTO clients (id, name, secret_hash, settings) VALUES ($1, $2, $3, $4)")
        .bind(c.id.clone())
        .bind(c.name.clone())
        .bind(c.secret_hash.clone())
        .bind(settings_json(c)?)
        .execute(to)
        .await
        .map_err(|e| conflict(e, format!("client {}", c.id)))?;
    Ok(())
}

impl Store {
    /// Registers a client.
    pub async fn insert_client(&self, c: &Client) -> Result<()> {
        insert_row(self.db.writer(), c).await
    }

    /// Registers `c`, replacing any client with its id (the platform's internal client, whose
    /// secret changes at every start).
    pub async fn replace_client(&self, c: &Client) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        sqlx::query("DELETE FROM clients WHERE id = $1")
            .bind(c.id.clone())
            .execute(&mut *tx)
            .await?;
        insert_row(&mut *tx, c).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces a registered client's name, secret hash and settings; false when there is none.
    pub async fn update_client(&self, c: &Client) -> Result<bool> {
        let settings = settings_json(c)?;
        let done = sqlx::query("UPDATE clients SET name = $1, secret_hash = $2, settings = $3 WHERE id = $4")
            .bind(c.name.clone())
            .bind(c.secret_hash.clone())
            .bind(settings)
            .bind(c.id.clone())
            .execute(self.db.writer())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes a client (its refresh tokens stop working: nothing can present them any more);
    /// false when there was none.
    pub async fn delete_client(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM clients WHERE id = $1")
            .bind(id.to_string())
            .execute(self.db.writer())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// A client by id.
    pub async fn client(&self, id: &str) -> Result<Option<Client>> {
        let Some(r) = sqlx::query("SELECT id, name, secret_hash, settings FROM clients WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.db.pool())
            .await?
        else {
            return Ok(None);
        };
        let settings: String = r.try_get(3)?;
        Ok(Some(Client {
            id: r.try_get(0)?,
            name: r.try_get(1)?,
            secret_hash: r.try_get(2)?,
            settings: json::<ClientSettings>(&settings, "settings")?,
        }))
    }
}
