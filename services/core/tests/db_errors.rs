//! The classification of database errors, with errors from a real
//! PostgreSQL (`make up`): what is retried, what stops the service as a
//! schema behind the code, and what is the data's fault.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use backorder_core::config::stack_env_value;
use backorder_core::db::{DbError, ErrorClass, classify};
use backorder_core::tokio_postgres::{self, NoTls};

async fn connect() -> tokio_postgres::Client {
    let url = stack_env_value("BACKORDER_PG_ADMIN_URL").expect("start the local stack with `make up`");
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

async fn class_of(client: &tokio_postgres::Client, sql: &str) -> ErrorClass {
    let error = client.batch_execute(sql).await.expect_err(sql);
    classify(&DbError::from(error))
}

#[tokio::test]
async fn sqlstates_are_classified_in_one_place() {
    let client = connect().await;
    let table = format!("t_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    client
        .batch_execute(&format!("CREATE TABLE {table} (id int PRIMARY KEY)"))
        .await
        .unwrap();

    // A read-only server, as after a failover: 25006.
    assert_eq!(
        class_of(&client, &format!("BEGIN READ ONLY; INSERT INTO {table} VALUES (1)")).await,
        ErrorClass::Transient
    );
    client.batch_execute("ROLLBACK").await.unwrap();

    // A lock held elsewhere and NOWAIT: 55P03.
    let other = connect().await;
    other
        .batch_execute(&format!("BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        .await
        .unwrap();
    assert_eq!(
        class_of(
            &client,
            &format!("BEGIN; LOCK TABLE {table} IN ACCESS SHARE MODE NOWAIT")
        )
        .await,
        ErrorClass::Transient
    );
    client.batch_execute("ROLLBACK").await.unwrap();
    other.batch_execute("ROLLBACK").await.unwrap();

    // The schema is behind the code: 42P01, 42703.
    assert_eq!(
        class_of(&client, "SELECT * FROM no_such_table").await,
        ErrorClass::SchemaBehind
    );
    assert_eq!(
        class_of(&client, &format!("SELECT no_such_column FROM {table}")).await,
        ErrorClass::SchemaBehind
    );

    // The data's fault: a unique violation, a bad value.
    client
        .batch_execute(&format!("INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap();
    assert_eq!(
        class_of(&client, &format!("INSERT INTO {table} VALUES (1)")).await,
        ErrorClass::Permanent
    );
    assert_eq!(class_of(&client, "SELECT 1/0").await, ErrorClass::Permanent);

    // No SQLSTATE: a value that does not convert is permanent, not retried
    // forever.
    let row = client.query_one("SELECT 'text'::text", &[]).await.unwrap();
    let error = row.try_get::<_, i64>(0).unwrap_err();
    assert_eq!(classify(&DbError::from(error)), ErrorClass::Permanent);

    // A connection that cannot be made is transient.
    let refused = tokio_postgres::connect("postgres://u@127.0.0.1:1/db", NoTls)
        .await
        .err()
        .unwrap();
    assert_eq!(classify(&DbError::from(refused)), ErrorClass::Transient);

    client.batch_execute(&format!("DROP TABLE {table}")).await.unwrap();
}
