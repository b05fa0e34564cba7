// The studio follows a growing events.jsonl: a half-written last line must wait for its newline, then arrive once.
#include <QTemporaryDir>
#include <QThread>
#include <QtTest>

#include <fstream>

#include <events.h>

#include "eventfollower.h"
#include "runhistory.h"

using studio::EventReader;

class TestEventReader : public QObject {
    Q_OBJECT
private:
    static void append(const QString & path, const std::string & text) {
        std::ofstream out(path.toStdString(), std::ios::app | std::ios::binary);
        out << text;
    }

private Q_SLOTS:
    void halfWrittenLineArrivesOnceComplete() {
        QTemporaryDir dir;
        QVERIFY(dir.isValid());
        const QString path = dir.filePath("events.jsonl");
        EventReader reader(path.toStdString());
        QCOMPARE(reader.poll().size(), size_t(0)); // no file yet

        append(path, "{\"event\":\"run_start\",\"time\":1,\"name\":\"a\"}\n{\"event\":\"train\",\"st");
        auto first = reader.poll();
        QCOMPARE(first.size(), size_t(1));
        QCOMPARE(QString::fromStdString(first[0]["event"].get<std::string>()), QStringLiteral("run_start"));
        QCOMPARE(reader.poll().size(), size_t(0)); // still half a line

        append(path, "ep\":5,\"loss\":2.5}\n");
        auto second = reader.poll();
        QCOMPARE(second.size(), size_t(1));
        QCOMPARE(second[0]["step"].get<int>(), 5);
        QCOMPARE(second[0]["loss"].get<double>(), 2.5);
        QCOMPARE(reader.skipped_lines(), int64_t(0));
        QCOMPARE(reader.poll().size(), size_t(0));
    }

    void garbageLineIsSkippedNotFatal() {
        QTemporaryDir dir;
        const QString path = dir.filePath("events.jsonl");
        append(path, "not json\n{\"event\":\"eval\",\"split\":\"valid\",\"ppl\":30}\n");
        EventReader reader(path.toStdString());
        auto events = reader.poll();
        QCOMPARE(events.size(), size_t(1));
        QCOMPARE(reader.skipped_lines(), int64_t(1));
    }

    // The worker used by the window delivers the same thing through a queued signal.
    void followerDeliversOnlyNewLines() {
        QTemporaryDir dir;
        const QString path = dir.filePath("events.jsonl");
        append(path, "{\"event\":\"train\",\"stage\":\"train\",\"step\":1,\"ppl\":100}\n{\"event\":\"tr");
        studio::EventFollower follower;
        studio::RunHistory history;
        int batches = 0;
        connect(&follower, &studio::EventFollower::eventsArrived, this, [&](quint64 generation, const studio::EventBatch & b) {
            QCOMPARE(generation, quint64(7));
            ++batches;
            history.ingest(*b.events);
        });
        follower.follow(dir.path(), 7);
        QCOMPARE(batches, 1);
        QCOMPARE(history.trainPpl.size(), 1);
        follower.poll();
        QCOMPARE(batches, 1); // nothing new: no empty batch
        append(path, "ain\",\"stage\":\"train\",\"step\":2,\"ppl\":80}\n");
        follower.poll();
        QCOMPARE(batches, 2);
        QCOMPARE(history.trainPpl.y, QVector<double>({100, 80}));
        QCOMPARE(history.trainPpl.x, QVector<double>({1, 2}));
    }

    // A replaced (shorter) file is read from its start, and the batch says so, so the view can drop the old history.
    void followerFlagsAReplacedFile() {
        QTemporaryDir dir;
        const QString path = dir.filePath("events.jsonl");
        append(path, "{\"event\":\"train\",\"stage\":\"train\",\"step\":1,\"ppl\":100}\n{\"event\":\"train\",\"stage\":\"train\",\"step\":2,\"ppl\":90}\n");
        studio::EventFollower follower;
        QVector<bool> restarted;
        QVector<size_t> sizes;
        connect(&follower, &studio::EventFollower::eventsArrived, this, [&](quint64, const studio::EventBatch & b) {
            restarted << b.restarted;
            sizes << b.events->size();
        });
        follower.follow(dir.path(), 1);
        QFile::remove(path);
        append(path, "{\"event\":\"run_start\"}\n");
        follower.poll();
        QCOMPARE(restarted, QVector<bool>({false, true}));
        QCOMPARE(sizes, QVector<size_t>({2, 1}));
    }
};

QTEST_MAIN(TestEventReader)
#include "test_gui_event_reader.moc"
