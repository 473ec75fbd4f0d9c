/**
 * Inputs that once made a clientFrames property fail (see docs/reliability.md "## Fuzzing").
 * Each is replayed by test/fuzz/clientFrames.test.ts on every run.
 */

/** Byte streams for FrameDecoder: hex, cut points (fractions of the length), frame limit. */
export const FRAME_REGRESSIONS: { name: string; streamHex: string; chunksAt: number[]; maxFrame: number }[] = [
  {
    // Found by 'FrameDecoder frames+garbage' (seed 6221058): a complete 1-byte frame, then a
    // header of 256 (> maxFrame 96) in the same chunk. push() threw and the complete frame was
    // lost, although fed one byte at a time the decoder delivered it: the outcome depended on
    // where the socket happened to cut the stream. Fixed in FrameDecoder.push.
    name: 'frame then oversized header in one chunk',
    streamHex: '01000000' + '00' + '00' + '01000000' + '00',
    chunksAt: [],
    maxFrame: 96,
  },
  {
    name: 'frame then zero-length header in one chunk',
    streamHex: '02000000' + '4a30' + '00000000',
    chunksAt: [],
    maxFrame: 96,
  },
];

/** Compile-request payloads (without the length prefix), hex. */
export const REQUEST_REGRESSIONS: string[] = [
  // Found by 'hostile fields and mutated valid requests' (seed 6221061) once environment values
  // that are not UTF-8 were carried opaque: PATH=0x80. The reference decoder had not followed.
  '43' + '02' + '00000000' + '00000000' + '01000000' + '2f' + '01000000' + '2f' + '00000000' + '01000000' + '06000000' + '504154483d80',
];
