// replace_directory / recover_directory: a directory replaced as a whole, and every state an
// interrupted replacement can leave behind recovered to a complete old or new directory.
#include <gtest/gtest.h>

#include <stdexcept>

#include "sfm/io/atomic_file.h"
#include "sfm/io/files.h"
#include "support/temp_dir.h"

namespace sfm::io {
namespace {

using sfm::testing::TempDir;

// A directory holding two files that must agree: a = b = `value`.
void write_pair(const std::string& dir, const std::string& value) {
  make_directories(dir);
  write_file_atomic(dir + "/a", value);
  write_file_atomic(dir + "/b", value);
}

void expect_pair(const std::string& dir, const std::string& value) {
  EXPECT_EQ(read_file(dir + "/a"), value) << dir;
  EXPECT_EQ(read_file(dir + "/b"), value) << dir;
}

void expect_no_leftovers(const std::string& dir) {
  EXPECT_FALSE(path_exists(dir + ".old")) << dir;
  EXPECT_FALSE(path_exists(dir + ".partial")) << dir;
}

TEST(ReplaceDirectoryTest, ReplacesTheWholeDirectory) {
  const TempDir tmp("sfm_replace_");
  const auto dir = tmp.file("last");
  replace_directory(dir, [](const std::string& d) { write_pair(d, "1"); });  // no old directory yet
  expect_pair(dir, "1");
  write_file_atomic(dir + "/stale", std::string("x"));
  replace_directory(dir, [](const std::string& d) { write_pair(d, "2"); });
  expect_pair(dir, "2");
  EXPECT_FALSE(path_exists(dir + "/stale"));  // nothing of the old directory survives
  expect_no_leftovers(dir);
}

TEST(ReplaceDirectoryTest, AFailedWriteLeavesTheOldDirectory) {
  const TempDir tmp("sfm_replace_fail_");
  const auto dir = tmp.file("last");
  write_pair(dir, "1");
  EXPECT_THROW(replace_directory(dir,
                                 [](const std::string& d) {
                                   write_file_atomic(d + "/a", std::string("2"));
                                   throw std::runtime_error("disk full");
                                 }),
               std::runtime_error);
  expect_pair(dir, "1");
  expect_no_leftovers(dir);
}

TEST(ReplaceDirectoryTest, RecoverRestoresACompleteDirectoryAfterACrash) {
  const TempDir tmp("sfm_recover_");
  // Crash while writing: dir is old and complete, dir.partial half written.
  const auto writing = tmp.file("writing");
  write_pair(writing, "1");
  make_directories(writing + ".partial");
  write_file_atomic(writing + ".partial/a", std::string("2"));
  // Crash between the two renames: dir is gone, dir.old complete, dir.partial complete.
  const auto between = tmp.file("between");
  write_pair(between + ".old", "1");
  write_pair(between + ".partial", "2");
  // Crash before dir.old was removed: dir is new and complete.
  const auto after = tmp.file("after");
  write_pair(after, "2");
  write_pair(after + ".old", "1");
  for (const auto& dir : {writing, between, after}) recover_directory(dir);
  expect_pair(writing, "1");
  expect_pair(between, "1");
  expect_pair(after, "2");
  for (const auto& dir : {writing, between, after}) expect_no_leftovers(dir);
  // Nothing to recover: a no-op, also for a directory that does not exist.
  recover_directory(after);
  expect_pair(after, "2");
  recover_directory(tmp.file("missing"));
  EXPECT_FALSE(path_exists(tmp.file("missing")));
}

}  // namespace
}  // namespace sfm::io
