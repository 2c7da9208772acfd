//! The PostgreSQL cluster of the tests: the library's throwaway cluster with `shop` and
//! `shop_staging`.

use shipgate_store::cluster::TempCluster;

pub struct Postgres(TempCluster);

impl Postgres {
    pub async fn start() -> Postgres {
        let cluster = TempCluster::start().unwrap();
        for db in ["shop", "shop_staging"] {
            cluster.create_database(db, None).await.unwrap();
        }
        Postgres(cluster)
    }

    pub fn url(&self, db: &str) -> String {
        self.0.url(db)
    }
}
