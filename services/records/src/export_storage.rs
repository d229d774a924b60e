//! Where Bulk Data `$export` files live: a trait an object store (S3, Azure Blob) can
//! implement, and [`FsExportStorage`], files under a directory. With several records replicas
//! that directory is a volume they all mount (a ReadWriteMany PersistentVolumeClaim), so any
//! replica answers a status poll or a download, whichever ran the export.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};

/// A file being written; readable by every replica once [`ExportFile::finish`] returns.
#[async_trait::async_trait]
pub trait ExportFile: AsyncWrite + Send + Unpin {
    /// Flushes and makes the file durable.
    async fn finish(self: Box<Self>) -> io::Result<()>;
}

/// Storage for the files of exports, by export id and file name (`Patient.ndjson`).
#[async_trait::async_trait]
pub trait ExportStorage: Send + Sync + 'static {
    /// A new file `name` of export `job`.
    async fn create(&self, job: &str, name: &str) -> io::Result<Box<dyn ExportFile>>;
    /// The finished file `name` of export `job`.
    async fn open(&self, job: &str, name: &str) -> io::Result<Box<dyn AsyncRead + Send + Unpin>>;
    /// Every file of export `job` (none is an answer, not an error).
    async fn remove(&self, job: &str) -> io::Result<()>;
    /// Where, for messages.
    fn describe(&self) -> String;
}

/// Files under `dir`, one directory per export.
pub struct FsExportStorage {
    dir: PathBuf,
}

impl FsExportStorage {
    /// Exports under `dir` (made on first use).
    pub fn new(dir: impl Into<PathBuf>) -> FsExportStorage {
        FsExportStorage { dir: dir.into() }
    }

    fn path(&self, job: &str, name: &str) -> io::Result<PathBuf> {
        // Both come from the service (a UUID and a resource type), never from a caller as is;
        // still, nothing that could leave the directory is accepted.
        let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !plain(job) || !plain(name) || name.starts_with('.') || job.starts_with('.') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("export file {job}/{name}"),
            ));
        }
        Ok(self.dir.join(job).join(name))
    }
}

/// A file under an [`FsExportStorage`].
struct FsFile(BufWriter<tokio::fs::File>);

impl AsyncWrite for FsFile {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[async_trait::async_trait]
impl ExportFile for FsFile {
    async fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.0.flush().await?;
        self.0.get_mut().sync_all().await
    }
}

#[async_trait::async_trait]
impl ExportStorage for FsExportStorage {
    async fn create(&self, job: &str, name: &str) -> io::Result<Box<dyn ExportFile>> {
        let path = self.path(job, name)?;
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let f = tokio::fs::File::create(&path).await?;
        Ok(Box::new(FsFile(BufWriter::with_capacity(1 << 20, f))))
    }

    async fn open(&self, job: &str, name: &str) -> io::Result<Box<dyn AsyncRead + Send + Unpin>> {
        Ok(Box::new(tokio::fs::File::open(self.path(job, name)?).await?))
    }

    async fn remove(&self, job: &str) -> io::Result<()> {
        let dir = self.path(job, "x")?.parent().map(PathBuf::from).unwrap_or_default();
        match tokio::fs::remove_dir_all(dir).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_file_written_by_one_replica_is_read_by_another_and_removed_with_its_export() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let (a, b) = (FsExportStorage::new(dir.path()), FsExportStorage::new(dir.path()));
        let mut f = a.create("job-1", "Patient.ndjson").await?;
        f.write_all(b"{\"resourceType\":\"Patient\"}\n").await?;
        f.finish().await?;
        let mut read = String::new();
        b.open("job-1", "Patient.ndjson")
            .await?
            .read_to_string(&mut read)
            .await?;
        assert_eq!(read, "{\"resourceType\":\"Patient\"}\n");
        b.remove("job-1").await?;
        assert!(a.open("job-1", "Patient.ndjson").await.is_err());
        b.remove("job-1").await?;
        assert!(
            a.create("../x", "Patient.ndjson").await.is_err(),
            "nothing outside the directory"
        );
        assert!(a.create("job", "../../etc").await.is_err());
        Ok(())
    }
}
