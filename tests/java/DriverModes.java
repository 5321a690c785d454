import java.sql.*;
import java.util.*;

/* pgjdbc in its less common modes, run by tests/integration/test_driver_modes.py once directly
 * against Postgres and once through sluice: it prints what the application sees, one line a step,
 * and the test compares the two outputs.
 *
 *   java -cp postgresql.jar DriverModes.java <scenario> <jdbc url> <table>
 *
 * features: prepareThreshold=1 (server-side statements from the first use, bound again in later
 * transactions on other backends), reWriteBatchedInserts, a batch with a duplicate key under
 * autosave=always (savepoints), binaryTransfer, setFetchSize cursors (Execute with a row limit,
 * PortalSuspended) one at a time and interleaved, an error in the middle of a fetch, 11 MB bytea,
 * setQueryTimeout (pgjdbc's CancelRequest). Two other connections run short transactions
 * meanwhile, so in transaction mode this one moves between backends.
 * staleResultType: connection A runs a server-side statement, B changes the column's type and
 * prepares the same text, A runs its statement again. */
public class DriverModes {
    static List<String> out = new ArrayList<>();
    static Connection c;
    interface Step { Object run() throws Exception; }
    static void step(String label, Step s) {
        String v;
        try {
            Object o = s.run();
            v = String.valueOf(o);
        } catch (SQLException e) {
            v = "ERR " + e.getSQLState() + " " + e.getMessage().split("\n")[0];
        } catch (Exception e) {
            v = "EXC " + e;
        }
        String w = "";
        try {
            for (SQLWarning x = c.getWarnings(); x != null; x = x.getNextWarning()) w += " W[" + x.getSQLState() + " " + x.getMessage() + "]";
            c.clearWarnings();
        } catch (SQLException e) { w = " W?" + e.getSQLState(); }
        out.add(label + ": " + v + w);
    }
    static String rs(ResultSet r) throws SQLException {
        StringBuilder b = new StringBuilder();
        int n = r.getMetaData().getColumnCount();
        while (r.next()) { b.append('('); for (int i = 1; i <= n; i++) { b.append(r.getString(i)); b.append(i < n ? "," : ""); } b.append(')'); }
        return b.toString();
    }
    static void features(String url, String t) throws Exception {
        Properties p = new Properties();
        p.setProperty("user", "app"); p.setProperty("password", "apppass");
        p.setProperty("prepareThreshold", "1");
        p.setProperty("reWriteBatchedInserts", "true");
        p.setProperty("autosave", "always");
        p.setProperty("binaryTransfer", "true");
        c = DriverManager.getConnection(url, p);
        // churn thread: other clients in transaction mode make this connection move backends
        Thread churn = new Thread(() -> {
            try (Connection o1 = DriverManager.getConnection(url, p); Connection o2 = DriverManager.getConnection(url, p)) {
                int i = 0;
                while (!Thread.interrupted()) {
                    Connection x = (i++ % 2 == 0) ? o1 : o2;
                    try (Statement s = x.createStatement()) { s.execute("SELECT pg_sleep(0.002)"); }
                }
            } catch (Exception e) { }
        });
        churn.start();
        step("create", () -> c.createStatement().executeUpdate("CREATE TABLE " + t + " (id int primary key, v text, b bytea)"));
        PreparedStatement ps = c.prepareStatement("SELECT ?::int + 1, ?::text");
        for (int i = 0; i < 8; i++) {
            final int k = i;
            step("ps" + i, () -> { ps.setInt(1, k); ps.setString(2, "x" + k); return rs(ps.executeQuery()); });
        }
        // batch insert, rewritten, autocommit
        step("batch", () -> {
            PreparedStatement ins = c.prepareStatement("INSERT INTO " + t + " (id, v) VALUES (?, ?)");
            for (int i = 0; i < 100; i++) { ins.setInt(1, i); ins.setString(2, "v" + i); ins.addBatch(); }
            return Arrays.toString(ins.executeBatch());
        });
        // batch with a duplicate in a transaction, autosave=always
        c.setAutoCommit(false);
        step("batch-dup", () -> {
            PreparedStatement ins = c.prepareStatement("INSERT INTO " + t + " (id, v) VALUES (?, ?)");
            for (int i = 200; i < 210; i++) { ins.setInt(1, i); ins.setString(2, "w"); ins.addBatch(); }
            ins.setInt(1, 5); ins.setString(2, "dup"); ins.addBatch();
            return Arrays.toString(ins.executeBatch());
        });
        step("after-dup-in-txn", () -> rs(c.createStatement().executeQuery("SELECT count(*) FROM " + t)));
        step("autosave-err", () -> c.createStatement().executeQuery("SELECT 1/0"));
        step("after-err", () -> rs(c.createStatement().executeQuery("SELECT count(*) FROM " + t)));
        step("commit", () -> { c.commit(); return "ok"; });
        // fetch size cursor: portal suspended, inside a transaction
        step("fetchsize", () -> {
            Statement s = c.createStatement();
            s.setFetchSize(7);
            ResultSet r = s.executeQuery("SELECT id, v FROM " + t + " ORDER BY id");
            int n = 0; long sum = 0;
            while (r.next()) { n++; sum += r.getInt(1); }
            return n + "/" + sum;
        });
        step("fetchsize-ps", () -> {
            PreparedStatement s = c.prepareStatement("SELECT g, repeat('y', g) FROM generate_series(1, ?) g");
            s.setFetchSize(10);
            s.setInt(1, 95);
            ResultSet r = s.executeQuery();
            int n = 0; long len = 0;
            while (r.next()) { n++; len += r.getString(2).length(); }
            PreparedStatement s2 = c.prepareStatement("SELECT ?::int * 2");
            s2.setInt(1, n);
            return n + "/" + len + "/" + rs(s2.executeQuery());
        });
        // two interleaved cursors in one transaction
        step("interleaved", () -> {
            Statement s1 = c.createStatement(); s1.setFetchSize(3);
            Statement s2 = c.createStatement(); s2.setFetchSize(4);
            ResultSet r1 = s1.executeQuery("SELECT g FROM generate_series(1, 20) g");
            ResultSet r2 = s2.executeQuery("SELECT g * 10 FROM generate_series(1, 20) g");
            StringBuilder b = new StringBuilder();
            while (r1.next() & r2.next()) b.append(r1.getInt(1)).append(':').append(r2.getInt(1)).append(' ');
            return b.toString();
        });
        step("fetch-err", () -> {
            Statement s = c.createStatement(); s.setFetchSize(5);
            ResultSet r = s.executeQuery("SELECT 10 / (15 - g) FROM generate_series(1, 20) g");
            int n = 0; while (r.next()) n++;
            return n;
        });
        step("after-fetch-err", () -> rs(c.createStatement().executeQuery("SELECT 1")));
        step("commit2", () -> { c.commit(); return "ok"; });
        c.setAutoCommit(true);
        // large bytea binary
        step("bytea", () -> {
            byte[] big = new byte[11 * 1024 * 1024];
            for (int i = 0; i < big.length; i++) big[i] = (byte) (i * 31);
            PreparedStatement s = c.prepareStatement("UPDATE " + t + " SET b = ? WHERE id = 1");
            s.setBytes(1, big);
            s.executeUpdate();
            PreparedStatement q = c.prepareStatement("SELECT b, md5(b) FROM " + t + " WHERE id = ?");
            q.setInt(1, 1);
            ResultSet r = q.executeQuery(); r.next();
            return Arrays.equals(r.getBytes(1), big) + " " + r.getString(2);
        });
        // query timeout (client-side cancel)
        step("timeout", () -> { Statement s = c.createStatement(); s.setQueryTimeout(1); return s.execute("SELECT pg_sleep(30)"); });
        step("after-timeout", () -> rs(c.createStatement().executeQuery("SELECT 42")));
        // server-side statements again after everything
        for (int i = 0; i < 4; i++) {
            final int k = i;
            step("ps-again" + i, () -> { ps.setInt(1, k); ps.setString(2, "z"); return rs(ps.executeQuery()); });
        }
        step("drop", () -> c.createStatement().executeUpdate("DROP TABLE " + t));
        churn.interrupt(); churn.join(10000);
        for (String s : out) System.out.println(s);
    }

    static void staleResultType(String url, String t) throws Exception {
        Properties p = new Properties();
        p.setProperty("user", "app"); p.setProperty("password", "apppass");
        p.setProperty("prepareThreshold", "1");
        Connection a = DriverManager.getConnection(url, p);
        Connection b = DriverManager.getConnection(url, p);
        c = a;
        step("create", () -> a.createStatement().execute(
            "CREATE TABLE " + t + " (id int, v int); INSERT INTO " + t + " VALUES (1, 5)"));
        PreparedStatement pa = a.prepareStatement("SELECT v FROM " + t + " WHERE id = ?");
        Step runA = () -> {
            pa.setInt(1, 1);
            ResultSet r = pa.executeQuery();
            r.next();
            return r.getObject(1) + " " + r.getMetaData().getColumnTypeName(1);
        };
        for (int i = 0; i < 3; i++) step("A runs", runA);
        step("B alters", () -> b.createStatement().execute(
            "ALTER TABLE " + t + " ALTER COLUMN v TYPE text USING 'abc' || v"));
        PreparedStatement pb = b.prepareStatement("SELECT v FROM " + t + " WHERE id = ?");
        for (int i = 0; i < 2; i++)
            step("B runs", () -> { pb.setInt(1, 1); return rs(pb.executeQuery()); });
        for (int i = 0; i < 2; i++) step("A runs again", runA);
        step("drop", () -> a.createStatement().execute("DROP TABLE " + t));
    }

    public static void main(String[] a) throws Exception {
        if (a[0].equals("features"))
            features(a[1], a[2]);
        else
            staleResultType(a[1], a[2]);
        for (String s : out) System.out.println(s);
        System.exit(0);
    }
}
